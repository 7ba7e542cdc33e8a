"""How many samples an epoch has, and which faces an epoch's sample positions are.

An epoch is a pass over the training faces, within two bounds. A small set is repeated (each
repeat augmented anew) up to ``at_least`` samples, so that an epoch is a useful amount of training
whatever the number of faces. A large set is sliced to ``at_most`` samples, so that an epoch costs
the same time however many faces a partition has: the presets' epoch counts were measured on face
sets of a given size (the quality preset's hour on a 500-face identity), and a 1000-frame video
would otherwise take twice that. Consecutive epochs take consecutive slices of one fixed shuffle of
the faces, so every face is trained on within a few epochs and the slices mix the whole video, not
one stretch of it. Nothing here depends on the run's state but the epoch index, so a resumed run
draws exactly the faces the uninterrupted one did.
"""

from __future__ import annotations

import torch

SLICE_SEED = 0  # the faces' one fixed shuffle, the same on every run of every partition


def epoch_size(faces: int, at_least: int = 0, at_most: int = 0) -> int:
    """Samples in one epoch of a set of ``faces`` training faces (``at_most`` 0: no upper bound)."""
    if at_most and at_most < at_least:
        raise ValueError(f"max_samples_per_epoch ({at_most}) must be 0 (no limit) or at least "
                         f"samples_per_epoch ({at_least})")
    size = max(faces, at_least)
    return min(size, at_most) if at_most else size


def epoch_rows(rows: torch.Tensor, positions: torch.Tensor, epoch: int, size: int) -> torch.Tensor:
    """The face rows at sample ``positions`` (in range(size)) of epoch ``epoch`` (0-based): the
    positions taken around the rows when the epoch is at least the set, else the epoch's slice of
    the rows' fixed shuffle."""
    rows = torch.as_tensor(rows)
    if size >= len(rows):
        return rows[positions % len(rows)]
    shuffle = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SLICE_SEED))
    return rows[shuffle[(epoch * size + positions) % len(rows)]]


def epoch_of_faces(size: int, faces: int | None) -> str:
    """How an epoch of ``size`` samples covers ``faces`` training faces, for the training's log."""
    if faces is None or faces == size:
        return ""
    if size > faces:
        return f" an epoch (its {faces} training faces repeated, each repeat augmented anew)"
    return (f" an epoch (a slice of its {faces} training faces, a different one each epoch, so that an epoch "
            f"costs what {size} faces do: max_samples_per_epoch)")
