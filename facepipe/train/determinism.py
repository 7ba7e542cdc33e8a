"""Seeds, data order and RNG state for exact, resumable training.

Every random stream the training touches is derived from the config seed, and every stream's
state can be captured into a checkpoint as tensors and plain types (so that the checkpoint
loads with ``torch.load(weights_only=True)``) and restored later. That is what makes
"N epochs straight" and "N/2 epochs + kill + resume" produce the same weights on CPU.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed for one named random stream, stable across Python versions and machines.

    Hashing (instead of ``seed + 1``) keeps the streams independent of each other: the data
    order of epoch 3 shares nothing with the augmentation stream or with epoch 4.
    """
    text = ":".join([str(int(seed)), *(str(label) for label in labels)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_global_rngs(seed: int) -> None:
    """Seed python ``random``, numpy's legacy global RNG and torch (CPU and every GPU)."""
    random.seed(derive_seed(seed, "python"))
    np.random.seed(derive_seed(seed, "numpy") % 2**32)
    torch.manual_seed(derive_seed(seed, "torch"))


def make_augmentation_generator(seed: int) -> torch.Generator:
    """The engine's own CPU generator handed to ``compute_loss`` for augmentation draws.

    It lives on the CPU on every device so the same seed gives the same augmentations on a
    laptop and on a GPU box (draw parameters on the CPU, then move them).
    """
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, "augmentation"))


def epoch_order(seed: int, epoch_index: int, num_samples: int) -> torch.Tensor:
    """The sample order of one epoch (0-based index), a function of (seed, epoch) only.

    Not drawn from a running generator, so resuming at any epoch or step recomputes exactly
    the order the uninterrupted run used.
    """
    generator = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "order", epoch_index))
    return torch.randperm(num_samples, generator=generator)


@dataclass
class RngSnapshot:
    """Raw states of every random stream at one instant (cheap to take every step)."""

    python: tuple
    numpy: tuple
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]
    torch_mps: torch.Tensor | None
    augmentation: torch.Tensor


def capture_rng(generator: torch.Generator) -> RngSnapshot:
    return RngSnapshot(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch_cpu=torch.get_rng_state(),
        # Only read GPU state when CUDA is already in use: querying it would initialise CUDA.
        torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        torch_mps=torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,
        augmentation=generator.get_state(),
    )


def restore_rng(snapshot: RngSnapshot, generator: torch.Generator) -> None:
    random.setstate(snapshot.python)
    np.random.set_state(snapshot.numpy)
    torch.set_rng_state(snapshot.torch_cpu)
    # A different GPU count cannot replay the per-device streams; they then keep their fresh
    # seeds (the run is no longer bit-exact, as it could not be on other hardware anyway).
    if snapshot.torch_cuda and torch.cuda.is_available() and len(snapshot.torch_cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(snapshot.torch_cuda)
    if snapshot.torch_mps is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(snapshot.torch_mps)
    generator.set_state(snapshot.augmentation)


def rng_to_checkpoint(snapshot: RngSnapshot) -> dict[str, Any]:
    """Tensors and plain types only, so ``torch.load(weights_only=True)`` can read it back."""
    python_version, python_internal, python_gauss = snapshot.python
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = snapshot.numpy
    return {
        "python": {
            "version": int(python_version),
            "internal": torch.tensor(python_internal, dtype=torch.int64),
            "gauss_next": python_gauss,
        },
        "numpy": {
            "name": str(numpy_name),
            "keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64).copy()),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "torch_cpu": snapshot.torch_cpu.clone(),
        "torch_cuda": [state.clone() for state in snapshot.torch_cuda],
        "torch_mps": None if snapshot.torch_mps is None else snapshot.torch_mps.clone(),
        "augmentation": snapshot.augmentation.clone(),
    }


def rng_from_checkpoint(saved: dict[str, Any]) -> RngSnapshot:
    python = saved["python"]
    numpy_state = saved["numpy"]
    return RngSnapshot(
        python=(
            python["version"],
            tuple(int(value) for value in python["internal"].tolist()),
            python["gauss_next"],
        ),
        numpy=(
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        ),
        torch_cpu=saved["torch_cpu"],
        torch_cuda=list(saved["torch_cuda"]),
        torch_mps=saved["torch_mps"],
        augmentation=saved["augmentation"],
    )


@contextmanager
def deterministic_torch(device: torch.device, enabled: bool, cpu_threads: int | None) -> Iterator[None]:
    """Deterministic kernels on CPU (and an optional fixed thread count) for the training only.

    The previous global settings come back afterwards, so training never changes the
    behaviour of code that runs after it in the same process (a Dagster run, a test session).
    """
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    previous_threads = torch.get_num_threads()
    try:
        if enabled and device.type == "cpu":
            torch.use_deterministic_algorithms(True)
            # Deterministic mode also fills every new tensor with NaN before a kernel writes it,
            # a guard against kernels that read memory they never wrote. The convolutions' outputs
            # and gradients are written whole, and the fill cost 3-4 % of a 2-core training step
            # (the identity model, XSeg and the adapter alike); without it every step computes the
            # same bits (checked on all three tasks, and on the demo's published model).
            torch.utils.deterministic.fill_uninitialized_memory = False
        if cpu_threads is not None and cpu_threads != previous_threads:
            torch.set_num_threads(cpu_threads)
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)


@contextmanager
def preserved_global_rngs() -> Iterator[None]:
    """Give the caller back its python/numpy/torch random states after training.

    Training seeds and advances the global RNGs; code running after it in the same process
    (other assets of a Dagster run, other tests) should not see a different random stream
    depending on whether a training ran before it.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
