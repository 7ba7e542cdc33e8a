"""How the swap export brings the face it paints to the target's skin tone and light.

The identity model paints the identity's own skin, in the light of the identity's footage: on the
dev pairs 14-21 ΔE from the target's face (german_news -> obama, kim -> mead, obama_early -> vox at
the demo length; `evaluate.tone_gap`), a face of another tone. FaceFusion matches the pasted face's
colours to the frame itself; DeepFaceLive pastes it as it comes unless its user turns its colour
transfer on (its default is none). So the export multiplies each colour channel of the painted face
by the factor that takes the mean colour of the swaps of the target's training faces, over the
central face, to those faces' own: a change of light and white balance after the model has painted,
which keeps the model's detail and reads nothing the model was not trained on. (Moving the
identity's faces to the target's tone before the swap latent is taken instead put the latent where
the identity model had not learnt to paint: blotches and a checkerboard on obama_early -> vox;
docs/swap_quality.md, "The target's skin tone".)
"""

from __future__ import annotations

import numpy as np

from facepipe.faces import central_face, resize_crops

MAX_GAIN = 2.0  # a channel is at most doubled or halved: beyond, the face was not lit alike at all


def face_means(crops: np.ndarray) -> np.ndarray:
    """The mean colour (per channel, 0-255) of the central face (``faces.CENTRAL_FACE``) over all of
    the uint8 crops [N, S, S, 3]."""
    return np.stack([central_face(crop).reshape(-1, 3).mean(axis=0) for crop in np.asarray(crops)]).mean(axis=0)


def tone_gain(swaps: np.ndarray, target_crops: np.ndarray, amount: float) -> tuple[float, float, float]:
    """Per-channel factors that take the mean colour of the central face of ``swaps`` [N, S, S, 3]
    (the target's training faces swapped) to that of ``target_crops`` (the same faces, any size), by
    ``amount`` in [0, 1] (a share of the way on a log scale: 0 none, 1 all the way), each within
    [1 / ``MAX_GAIN``, ``MAX_GAIN``]."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"skin_tone is the share of the way to the target's skin tone, 0 to 1, got {amount}; "
                         f"set pair__onnx_export's skin_tone in run config accordingly")
    swaps = np.asarray(swaps)
    ratio = face_means(resize_crops(np.asarray(target_crops), swaps.shape[1])) / np.maximum(face_means(swaps), 1.0)
    return tuple(float(g) for g in np.clip(ratio ** amount, 1 / MAX_GAIN, MAX_GAIN))
