"""Which device trains, and whether it uses mixed precision."""

from __future__ import annotations

import os

import torch


def select_device(requested: str = "auto") -> torch.device:
    """``"auto"``: cuda, then mps, then cpu. A named device must exist, or this says why not."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"unknown training device {requested!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"training device {requested!r} asked for, but torch sees no CUDA GPU here; use device='auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"training device {requested!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"training device {requested!r} asked for, but MPS is not available here; use device='auto' or 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported training device {requested!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def uses_mixed_precision(device: torch.device, wanted: bool) -> bool:
    """fp16 autocast with a GradScaler only on CUDA. CPU and MPS stay fp32: the CPU's autocast (bf16
    or fp16) was never measured faster here, and MPS autocast still misses kernels. (The CPU's fp16
    autocast casts convolutions as CUDA's does, which is how the tests check losses under it.)"""
    return wanted and device.type == "cuda"


def flush_denormals() -> bool:
    """Compute with denormal floats flushed to zero on the CPU (x86 FTZ/DAZ; False where the CPU
    has no such mode). Late in training some of the identity model's gradients fall below float32's
    normal range, and arithmetic on denormals runs many times slower: on 2 cores its step slowed
    from 0.103 s to 0.125 s from about the epoch the random warp stops (an epoch 3.2 s -> 3.9-4.3 s),
    and 0.107 s with them flushed (docs/swap_quality.md, "Denormals"). The demo built the same bytes
    with and without: values under 1e-38 moved no weight there.
    It is set on importing the engine, before torch's first parallel kernel, because the CPU
    thread pool's workers take the floating-point mode of the thread that starts them and keep it;
    and again as each training starts, because onnxruntime's first session in a process clears the
    mode of the thread that opens it."""
    return torch.set_flush_denormal(True)


flush_denormals()


def uses_channels_last(device: torch.device) -> bool:
    """Convolution weights and activations in channels-last layout on the CPU, where oneDNN picks
    faster kernels for it: the identity model's training step on 2 cores measured 145-148 ms
    against 162-170 ms (batch 16, demo settings), a demo build's training 606 s against 741-747.
    Still fp32; saved tensors are made contiguous, so checkpoints and exports are laid out as
    before. GPUs keep the default layout: not measured there."""
    return device.type == "cpu"


def default_cpu_threads(alone: bool = False) -> int:
    """CPU training threads: every core when the training runs alone, else half (at least one).

    `facepipe build` (and the demo, and the benchmarks) make one run at a time and its steps run one
    after another, so nothing else computes beside the training: it takes every core (measured on
    2 cores: a training step 1.8x faster with 2 threads than with 1). Runs launched by Dagster (the
    UI, schedules, sensors) may run beside data preparation (MediaPipe); a torch thread that shares a
    core with it stalls every parallel kernel at its barrier, which measured 5-20x slower steps on
    2 cores than one thread, so they leave half the cores free.
    """
    cores = os.cpu_count() or 2
    return cores if alone else max(1, cores // 2)
