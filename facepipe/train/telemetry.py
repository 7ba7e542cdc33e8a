"""What a training run tells its user: the per-epoch log line, TensorBoard scalars, and the
loss curve as a PNG and a markdown table (for Dagster metadata)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# History keys the engine writes itself; everything else in an entry came from evaluate().
ENGINE_KEYS = ("epoch", "loss", "lr", "seconds", "frames_used", "global_step")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    whole = round(max(seconds, 0.0))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def evaluation_metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in entry.items() if key not in ENGINE_KEYS}


def format_epoch_line(
    entry: dict[str, Any],
    *,
    total_epochs: int,
    eta_seconds: float,
    batch_size: int,
    grad_accum_steps: int,
    device: str,
) -> str:
    """One line per epoch, ``key=value`` so it reads well and greps well."""
    parts = [
        f"epoch {entry['epoch']}/{total_epochs}",
        f"loss={entry['loss']:.6g}",
        f"lr={entry['lr']:.3g}",
        f"s/epoch={entry['seconds']:.2f}",
        f"eta={format_duration(eta_seconds)}",
        f"frames_used={entry['frames_used']}",
        f"batch_size={batch_size}",
        f"grad_accum_steps={grad_accum_steps}",
        f"effective_batch={batch_size * grad_accum_steps}",
        f"device={device}",
    ]
    parts += [f"{key}={value:.6g}" for key, value in sorted(evaluation_metrics(entry).items())]
    return " ".join(parts)


def open_tensorboard(log_dir: Path, first_epoch: int):
    """A SummaryWriter that discards events a killed earlier session logged past the checkpoint
    it resumes from (``purge_step``), so curves never show an epoch twice."""
    # Imported here, not at module level: tensorboard is slow to import.
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=first_epoch if first_epoch > 1 else None)


def write_epoch_scalars(writer, entry: dict[str, Any]) -> None:
    epoch = entry["epoch"]
    writer.add_scalar("loss", entry["loss"], epoch)
    writer.add_scalar("lr", entry["lr"], epoch)
    writer.add_scalar("seconds_per_epoch", entry["seconds"], epoch)
    for key, value in sorted(evaluation_metrics(entry).items()):
        writer.add_scalar(f"eval/{key}", value, epoch)
    writer.flush()


def loss_table_markdown(history: Sequence[dict[str, Any]]) -> str:
    """Epoch, loss, lr, seconds, frames used and any evaluation metrics, one row per epoch."""
    metric_keys = sorted({key for entry in history for key in evaluation_metrics(entry)})
    header = ["epoch", "loss", "lr", "seconds", "frames_used", *metric_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for entry in history:
        cells = [
            str(entry["epoch"]),
            f"{entry['loss']:.6g}",
            f"{entry['lr']:.3g}",
            f"{entry['seconds']:.2f}",
            str(entry["frames_used"]),
            *(f"{entry[key]:.6g}" if key in entry else "" for key in metric_keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_curve_png(history: Sequence[dict[str, Any]], path: Path, title: str = "training loss") -> Path:
    """Loss per epoch (and evaluation metrics in a second panel, if any) as a PNG.

    Uses the Agg canvas directly rather than pyplot: no global figure state, no GUI backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("loss_curve_png needs at least one epoch of history")
    epochs = [entry["epoch"] for entry in history]
    metric_keys = sorted({key for entry in history for key in evaluation_metrics(entry)})
    figure = Figure(figsize=(6.4, 3.6 if not metric_keys else 6.0), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes = figure.add_subplot(2 if metric_keys else 1, 1, 1)
    loss_axes.plot(epochs, [entry["loss"] for entry in history], marker="o", markersize=3)
    loss_axes.set_title(title)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    losses = [entry["loss"] for entry in history if math.isfinite(entry["loss"])]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        loss_axes.set_yscale("log")  # early epochs would otherwise flatten the rest
    loss_axes.grid(True, alpha=0.3)
    if metric_keys:
        metric_axes = figure.add_subplot(2, 1, 2)
        for key in metric_keys:
            points = [(entry["epoch"], entry[key]) for entry in history if key in entry]
            metric_axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
        metric_axes.set_xlabel("epoch")
        metric_axes.legend()
        metric_axes.grid(True, alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
