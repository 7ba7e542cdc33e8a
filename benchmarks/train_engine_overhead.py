"""Training throughput of the engine against a bare PyTorch loop, same model, data and steps.

    python benchmarks/train_engine_overhead.py [--size 96] [--samples 256] [--batch 16] [--epochs 3]

Both loops train the same small conv autoencoder (the identity model's CPU size: 96 px,
width 24) on the same seeded synthetic images with the same batch order, for the same number
of optimizer steps. The engine's time includes everything it does per run: per-step RNG/buffer
snapshots, a full checkpoint (fsync'd) and TensorBoard scalars after every epoch, the final
weights file. The bare loop runs under the same torch.use_deterministic_algorithms setting so
the ratio measures the engine's bookkeeping, not a kernel choice. Runs alternate (bare, engine,
bare, ...) so changing machine load hits both; the fastest of --repeats runs of each is compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from facepipe.train import TrainConfig, TrainTask, resume_key_for, select_device, train
from facepipe.train.determinism import epoch_order, seed_global_rngs


def build_autoencoder(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 5, stride=2, padding=2), nn.LeakyReLU(0.1),
        nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.1),
        nn.Conv2d(2 * width, 4 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1), nn.Sigmoid(),
    )


def synthetic_images(samples: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(samples, 3, size, size, generator=generator)


class AutoencoderTask(TrainTask):
    def __init__(self, images: torch.Tensor, width: int):
        self.images = images
        self.width = width
        self.num_samples = len(images)

    def build_model(self) -> nn.Module:
        return build_autoencoder(self.width)

    def build_optimizer(self, model, lr):
        return torch.optim.Adam(model.parameters(), lr=lr)

    def compute_loss(self, model, batch_indices, generator, device):
        batch = self.images[batch_indices].to(device)
        return nn.functional.l1_loss(model(batch), batch)


def bare_loop(images: torch.Tensor, width: int, batch: int, epochs: int, lr: float, seed: int, device: torch.device) -> float:
    """The loop a script would write: seeded model, Adam, per-epoch shuffle; returns seconds."""
    seed_global_rngs(seed)
    model = build_autoencoder(width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = len(images) // batch
    started = time.perf_counter()
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, len(images))
        for step in range(steps):
            indices = order[step * batch : (step + 1) * batch]
            inputs = images[indices].to(device)
            loss = nn.functional.l1_loss(model(inputs), inputs)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss.item()  # wait for the device, as the engine's epoch-end loss read does
    return time.perf_counter() - started


def engine_loop(images: torch.Tensor, width: int, batch: int, epochs: int, lr: float, seed: int, device: str) -> float:
    config_fields = {"epochs": epochs, "batch_size": batch, "lr": lr, "seed": seed, "device": device, "mixed_precision": False}
    config = TrainConfig(**config_fields, resume_key=resume_key_for(config_fields, benchmark=len(images)))
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(AutoencoderTask(images, width), config, Path(run_dir), log=lambda line: None)
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
    images = synthetic_images(args.samples, args.size)
    steps = args.samples // args.batch * args.epochs
    samples_trained = steps * args.batch
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (import cost is not training cost)

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(device.type == "cpu")  # the engine's CPU setting
    try:
        bare_loop(images, args.width, args.batch, 1, 1e-3, 0, device)  # warm-up: allocator, kernels
        bare_seconds, engine_seconds = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both
            bare_seconds.append(bare_loop(images, args.width, args.batch, args.epochs, 1e-3, 0, device))
            engine_seconds.append(engine_loop(images, args.width, args.batch, args.epochs, 1e-3, 0, str(device)))
    finally:
        torch.use_deterministic_algorithms(previous)

    bare_rate = samples_trained / min(bare_seconds)
    engine_rate = samples_trained / min(engine_seconds)
    print(
        f"conv autoencoder {args.size}px width {args.width}, {args.samples} samples, batch {args.batch}, "
        f"{args.epochs} epochs = {steps} steps on {device} ({torch.get_num_threads()} threads)"
    )
    print(f"bare loop : {bare_rate:8.1f} samples/s  (runs: {', '.join(f'{s:.2f}s' for s in bare_seconds)})")
    print(f"engine    : {engine_rate:8.1f} samples/s  (runs: {', '.join(f'{s:.2f}s' for s in engine_seconds)})")
    print(f"ratio engine/bare throughput: {engine_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
