"""Training throughput of the engine against a bare PyTorch loop, same model, data and steps.

    python benchmarks/train_engine_overhead.py [--size 96] [--samples 256] [--batch 16] [--epochs 3]

Both loops train the identity model (IdentityAutoencoder at its CPU size: 96 px, width 24)
with its own augmentation (shared homography + elastic warp) and loss (masked L1 + DSSIM +
mask BCE) on the same seeded synthetic images with the same batch order, for the same number
of optimizer steps. The engine's time includes everything it does per run: per-step RNG/buffer
snapshots, full checkpoints (fsync'd), TensorBoard scalars after every epoch, the final
weights file. It runs twice: checkpointing after every epoch (`checkpoint_seconds` 0, the engine's
own default) and at the training assets' cadence (`CHECKPOINT_SECONDS`, at most once a minute, so
only the last epoch's in a short run). The bare loop runs under the engine's own deterministic settings
(`deterministic_torch`: deterministic kernels, no NaN fill of fresh tensors) so
the ratio measures the engine's bookkeeping, not a kernel choice. Runs alternate (bare, engine,
bare, ...) so changing machine load hits both; the fastest of --repeats runs of each is compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from facepipe.assets.training import CHECKPOINT_SECONDS
from facepipe.train.tasks.reconstruction import ReconstructionTask
from facepipe.models.augment import augment_batch
from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder
from facepipe.models.losses import reconstruction_loss
from facepipe.train import TrainConfig, resume_key_for, select_device, train
from facepipe.train.determinism import deterministic_torch, epoch_order, seed_global_rngs


def synthetic_faces(samples: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images and full masks: throughput does not depend on what the pixels show."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(samples, 3, size, size, generator=generator), torch.ones(samples, 1, size, size)


def identity_task(images: torch.Tensor, masks: torch.Tensor, width: int) -> ReconstructionTask:
    """The identity model's own task: augmentation, model and loss as the asset trains them."""
    return ReconstructionTask(images, masks, range(len(images)), [], AutoencoderConfig(size=images.shape[-1], width=width))


def bare_loop(images, masks, width: int, batch: int, epochs: int, lr: float, seed: int, device: torch.device) -> float:
    """The loop a script would write: seeded model, AdamW, per-epoch shuffle, the same
    augmentation and loss; returns seconds."""
    seed_global_rngs(seed)
    model = IdentityAutoencoder(AutoencoderConfig(size=images.shape[-1], width=width)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = len(images) // batch
    started = time.perf_counter()
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, len(images))
        for step in range(steps):
            indices = order[step * batch : (step + 1) * batch]
            inputs, targets, target_masks = augment_batch(images[indices], masks[indices], generator)
            bgr, mask_logits = model(inputs.to(device))
            loss, _ = reconstruction_loss(bgr, mask_logits, targets.to(device), target_masks.to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss.item()  # wait for the device, as the engine's epoch-end loss read does
    return time.perf_counter() - started


def engine_loop(images, masks, width: int, batch: int, epochs: int, lr: float, seed: int, device: str,
                checkpoint_seconds: float) -> float:
    config_fields = {"epochs": epochs, "batch_size": batch, "lr": lr, "seed": seed, "device": device, "mixed_precision": False,
                     "checkpoint_seconds": checkpoint_seconds}
    config = TrainConfig(**config_fields, resume_key=resume_key_for(config_fields, benchmark=len(images)))
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(identity_task(images, masks, width), config, Path(run_dir), log=lambda line: None)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: on a shared machine a busy core stalls every "
        "multi-threaded step, which swamps the difference measured; 0 keeps torch's default)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    args = parser.parse_args()

    device = select_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    images, masks = synthetic_faces(args.samples, args.size)
    steps = args.samples // args.batch * args.epochs
    samples_trained = steps * args.batch
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (import cost is not training cost)

    with deterministic_torch(device, True, None):  # the engine's CPU setting
        bare_loop(images, masks, args.width, args.batch, 1, 1e-3, 0, device)  # warm-up: allocator, kernels
        cadences = {"engine, a checkpoint every epoch": 0.0, f"engine, at most every {CHECKPOINT_SECONDS:g} s": CHECKPOINT_SECONDS}
        bare_seconds, engine_seconds = [], {name: [] for name in cadences}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits all
            bare_seconds.append(bare_loop(images, masks, args.width, args.batch, args.epochs, 1e-3, 0, device))
            for name, seconds in cadences.items():
                engine_seconds[name].append(engine_loop(images, masks, args.width, args.batch, args.epochs, 1e-3, 0,
                                                        str(device), seconds))

    bare_rate = samples_trained / min(bare_seconds)
    print(
        f"identity autoencoder {args.size}px width {args.width}, {args.samples} samples, batch {args.batch}, "
        f"{args.epochs} epochs = {steps} steps on {device} ({torch.get_num_threads()} threads)"
    )
    print(f"bare loop: {bare_rate:8.1f} samples/s  (runs: {', '.join(f'{s:.2f}s' for s in bare_seconds)})")
    for name, seconds in engine_seconds.items():
        engine_rate = samples_trained / min(seconds)
        print(f"{name}: {engine_rate:8.1f} samples/s, {engine_rate / bare_rate:.3f} of the bare loop's "
              f"(runs: {', '.join(f'{s:.2f}s' for s in seconds)})")


if __name__ == "__main__":
    main()
