"""The training loop: one function, state in one place, a checkpoint after every epoch.

Resume exactness rests on four things: the data order is a function of (seed, epoch); every
random stream is saved and restored; optimizer, scheduler and grad scaler state are saved; and
checkpoints are only written at optimizer-step boundaries (an interrupt waits for the step to
finish; an error mid-step rolls the random streams and buffers back to the step's start).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facepipe.train.checkpoints import (
    WEIGHTS_FILE,
    Checkpoint,
    CorruptCheckpointWarning,
    atomic_write_bytes,
    checkpoint_name,
    checkpoint_problem,
    find_latest_valid,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    run_lock,
    save_checkpoint,
)
from facepipe.train.config import RESULT_FIELDS, TrainConfig
from facepipe.train.determinism import (
    RngSnapshot,
    capture_rng,
    deterministic_torch,
    epoch_order,
    make_augmentation_generator,
    preserved_global_rngs,
    restore_rng,
    rng_from_checkpoint,
    rng_to_checkpoint,
    seed_global_rngs,
)
from facepipe.train.device import flush_denormals, select_device, uses_channels_last, uses_mixed_precision
from facepipe.train.epochs import epoch_of_faces
from facepipe.train.interrupts import (
    StopRequest,
    forward_to_previous_handler,
    stop_on_signals,
)
from facepipe.train.task import TrainTask
from facepipe.train.telemetry import (
    ENGINE_KEYS,
    evaluation_metrics,
    format_duration,
    format_epoch_line,
    loss_curve_png,
    loss_table_markdown,
    open_tensorboard,
    write_epoch_scalars,
)

STATE_FORMAT = 1


class TrainingDiverged(FloatingPointError):
    """The epoch's mean loss is not finite; no checkpoint is written of a diverged model."""


@dataclass
class TrainState:
    """Where the run is. Saved in every checkpoint; everything else is derived from it."""

    epochs_completed: int = 0
    step_in_epoch: int = 0  # optimizer steps done in the epoch after epochs_completed
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # The unfinished epoch's step-loss sum and seconds as of the checkpoint it resumed from
    # (zero at an epoch start); the running values live in the loop until the epoch ends.
    epoch_loss_sum: float = 0.0
    epoch_seconds: float = 0.0

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epochs_completed": self.epochs_completed,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": [dict(entry) for entry in self.history],
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_seconds": self.epoch_seconds,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        return cls(**saved)


@dataclass(frozen=True)
class TrainResult:
    weights_path: Path  # safetensors of task.weights_to_save(model) after the last epoch
    history: list[dict[str, Any]]  # one entry per epoch: epoch, loss, lr, seconds, frames_used, global_step, evaluate()'s metrics
    final_metrics: dict[str, float]  # the last epoch's loss and evaluation metrics
    duration_seconds: float  # wall time of this call
    resumed_from_epoch: int  # epochs already done when this call started (0: fresh start)
    epochs: int
    best: dict[str, Any] | None  # {"metric", "mode", "value", "epoch"}
    best_weights_path: Path | None  # the best epoch's checkpoint weights, while it is kept
    run_key_dir: Path
    device: str

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_key_dir / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_key_dir / "tensorboard"

    def loss_curve_png(self, path: Path) -> Path:
        return loss_curve_png(self.history, path)

    def loss_table_markdown(self) -> str:
        return loss_table_markdown(self.history)


@dataclass
class _Boundary:
    """Random streams and buffers (e.g. BatchNorm statistics) at the start of an optimizer
    step: what an error part-way through the step rolls back to before saving."""

    rng: RngSnapshot
    buffers: dict[str, torch.Tensor]


def checkpoints_dir_of(run_dir: Path, config: TrainConfig) -> Path:
    """Where ``train`` keeps the checkpoints of this config's run."""
    return Path(run_dir) / config.resume_key / "checkpoints"


def train(
    task: TrainTask,
    config: TrainConfig,
    run_dir: Path,
    log: Callable[[str], None] = print,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train ``task`` for ``config.epochs`` epochs, continuing any checkpoint of the same resume key.

    Checkpoints, TensorBoard events and final weights live in ``run_dir/<resume_key>/``.
    Returns at once if that run already finished ``config.epochs`` epochs. On SIGINT/SIGTERM it
    saves and then lets the previous handler act (KeyboardInterrupt, Dagster's interrupt, exit);
    on an error it saves and re-raises. ``on_checkpoint(checkpoints_dir)``, if given, is called
    after every save and every pruning (e.g. to mirror the folder to another machine).
    """
    started = time.monotonic()
    checkpoints_dir = checkpoints_dir_of(run_dir, config)
    run_key_dir = checkpoints_dir.parent
    device = select_device(config.device)
    mixed_precision = uses_mixed_precision(device, config.mixed_precision)
    num_samples = _checked_num_samples(task)
    steps_per_epoch = num_samples // config.effective_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{num_samples} training samples are fewer than one effective batch "
            f"({config.batch_size} x {config.grad_accum_steps}); lower batch_size or grad_accum_steps"
        )

    def warn(message: str) -> None:
        warnings.warn(message, CorruptCheckpointWarning, stacklevel=3)
        log(f"WARNING: {message}")

    with run_lock(run_key_dir):
        remove_stale_temporaries(run_key_dir)
        remove_stale_temporaries(checkpoints_dir)
        latest = find_latest_valid(checkpoints_dir, warn)
        if latest is not None and latest.position >= (config.epochs, 0):
            return _already_finished(task, config, run_key_dir, latest, device, started, log)

        precision = "fp16 mixed precision" if mixed_precision else "fp32"
        determinism = ", deterministic" if config.deterministic and device.type == "cpu" else ""
        threads = f", {config.cpu_threads or torch.get_num_threads()} threads" if device.type == "cpu" else ""
        log(
            f"training {type(task).__name__} on {device} ({precision}{determinism}{threads}): {num_samples} samples"
            f"{epoch_of_faces(num_samples, task.training_faces)}, "
            f"batch_size {config.batch_size} x grad_accum_steps {config.grad_accum_steps} = effective batch "
            f"{config.effective_batch}, {steps_per_epoch} steps/epoch, {config.epochs} epochs, run dir {run_key_dir}"
        )
        # Again here, not only on import: onnxruntime's first session in a process (the embedder's,
        # in the identity profile) clears the calling thread's flush-to-zero mode, and every later
        # training in that process (the benchmark's stages, several partitions in one `facepipe
        # build`) then ran 20-45 % slower (docs/swap_quality.md, "One process, several trainings").
        # Before the thread count is set, so new workers inherit it.
        flush_denormals()
        with (
            preserved_global_rngs(),
            deterministic_torch(device, config.deterministic, config.cpu_threads),
            stop_on_signals() as stop,
        ):
            last_checkpoint, history = _train_epochs(
                task, config, device, mixed_precision, num_samples, steps_per_epoch, run_key_dir, latest, stop, log,
                on_checkpoint or (lambda _folder: None),
            )
        # Handlers, global torch settings and the caller's RNG states are back: pass the signal on.
        if stop.requested:
            forward_to_previous_handler(
                stop, f"training stopped by {stop.signal_name}; checkpoint saved at {last_checkpoint.path}"
            )
        weights_path = _publish_final_weights(last_checkpoint, run_key_dir, config.epochs)
        duration = time.monotonic() - started
        log(f"finished {config.epochs} epochs in {format_duration(duration)}; weights {weights_path}")
        return _result(task, config, run_key_dir, history, weights_path, duration, latest, device)


def initial_model(task: TrainTask, seed: int) -> nn.Module:
    """The model a fresh run of ``task`` starts from: the global RNGs seeded from ``seed``, then
    ``build_model``. Anything that reports "before training" figures must use this one."""
    seed_global_rngs(seed)
    return task.build_model()


def _train_epochs(
    task: TrainTask,
    config: TrainConfig,
    device: torch.device,
    mixed_precision: bool,
    num_samples: int,
    steps_per_epoch: int,
    run_key_dir: Path,
    latest: Checkpoint | None,
    stop: StopRequest,
    log: Callable[[str], None],
    on_checkpoint: Callable[[Path], None],
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Build or restore everything, run the remaining epochs; return the last checkpoint and
    the history it holds."""
    checkpoints_dir = run_key_dir / "checkpoints"

    # Seeded before build_model so a fresh run's initial weights are reproducible; a resumed
    # run then overwrites weights and random streams from the checkpoint.
    model = initial_model(task, config.seed).to(device)
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    generator = make_augmentation_generator(config.seed)
    _check_weights_to_save(task, model)
    optimizer = task.build_optimizer(model, config.lr)
    scheduler = task.build_scheduler(optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    state = TrainState()

    if latest is None:
        log(f"starting fresh at epoch 1/{config.epochs}: no checkpoint for resume key {config.resume_key}"
            + _other_keys_note(run_key_dir))
    else:
        weights, saved = load_checkpoint(latest)
        _check_same_run(saved, config, num_samples, latest)
        load_saved_weights(task, model, weights, latest.weights_path)
        optimizer.load_state_dict(saved["optimizer"])
        if (scheduler is None) != (saved["scheduler"] is None):
            raise ValueError(f"{latest.state_path}: the task's scheduler changed (present vs absent) under the same resume key")
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if mixed_precision and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        restore_rng(rng_from_checkpoint(saved["rng"]), generator)
        state = TrainState.from_checkpoint(saved["progress"])
        where = f"epoch {state.epochs_completed + 1}/{config.epochs}"
        if state.step_in_epoch:
            where += f", step {state.step_in_epoch + 1}/{steps_per_epoch}"
        log(f"resumed at {where} from {latest.path} ({state.epochs_completed} epochs done)")

    writer = open_tensorboard(run_key_dir / "tensorboard", first_epoch=state.epochs_completed + 1)
    last_checkpoint = latest
    saved_position = latest.position if latest is not None else None
    state_loadability_checked = False  # read back the first save of this session with weights_only=True
    session_epoch_seconds: list[float] = []
    # The consistent point a checkpoint may capture: a _Boundary to roll back to, "live" when
    # the current objects are consistent with `state`, None while an optimizer step is applied.
    boundary: _Boundary | str | None = "live"
    loss_sum = torch.zeros((), device=device)
    epoch_clock = time.monotonic()
    saved_at = epoch_clock  # when the last checkpoint was written (or training started)

    def save() -> Checkpoint:
        nonlocal last_checkpoint, saved_position, state_loadability_checked
        progress = state.to_checkpoint()
        if state.step_in_epoch > 0:  # mid-epoch: carry the unfinished epoch's loss and time
            progress["epoch_loss_sum"] = float(loss_sum.item())
            progress["epoch_seconds"] = state.epoch_seconds + (time.monotonic() - epoch_clock)
        training_state = {
            "format": STATE_FORMAT,
            "resume_key": config.resume_key,
            "config": config.as_plain_dict(),
            "num_samples": num_samples,
            "steps_per_epoch": steps_per_epoch,
            "progress": progress,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "rng": rng_to_checkpoint(capture_rng(generator)),
        }
        last_checkpoint = save_checkpoint(
            checkpoints_dir,
            epochs_completed=state.epochs_completed,
            step_in_epoch=state.step_in_epoch,
            weights=task.weights_to_save(model),
            state=training_state,
            resume_key=config.resume_key,
            check_state_loads=not state_loadability_checked,
        )
        state_loadability_checked = True
        saved_position = last_checkpoint.position
        on_checkpoint(checkpoints_dir)
        return last_checkpoint

    try:
        for epoch_index in range(state.epochs_completed, config.epochs):
            order = epoch_order(config.seed, epoch_index, num_samples)
            task.start_epoch(epoch_index)
            model.train()
            loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float32, device=device)
            epoch_clock = time.monotonic()

            for step in range(state.step_in_epoch, steps_per_epoch):
                boundary = _Boundary(capture_rng(generator), _copy_buffers(model))
                step_loss = torch.zeros((), device=device)
                for micro in range(config.grad_accum_steps):
                    start = step * config.effective_batch + micro * config.batch_size
                    batch_indices = order[start : start + config.batch_size]
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=mixed_precision):
                        loss = task.compute_loss(model, batch_indices, generator, device)
                    _check_loss_shape(loss, task)
                    # Scaled so the accumulated gradient is the mean over the effective batch.
                    scaler.scale(loss / config.grad_accum_steps).backward()
                    step_loss += loss.detach().float() / config.grad_accum_steps

                boundary = None  # model and optimizer change below: no consistent point until done
                if config.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(trainable, config.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
                loss_sum += step_loss
                state.step_in_epoch = step + 1
                state.global_step += 1
                boundary = "live"

                if stop.requested:
                    checkpoint = save()
                    log(f"{stop.signal_name} received: saved {checkpoint.path} (epoch {epoch_index + 1}, "
                        f"step {state.step_in_epoch}/{steps_per_epoch}); stopping")
                    return checkpoint, state.history

            boundary = _Boundary(capture_rng(generator), _copy_buffers(model))
            metrics = _evaluate(task, model, device)
            epoch_loss = float(loss_sum.item()) / steps_per_epoch
            # Under mixed precision an inf loss is routine (the scaler skips that step), but
            # non-finite weights never are.
            loss_diverged = not math.isfinite(epoch_loss) and not mixed_precision
            if loss_diverged or not _all_finite(trainable):
                raise TrainingDiverged(
                    f"epoch {epoch_index + 1}: mean loss {epoch_loss}, weights "
                    f"{'finite' if _all_finite(trainable) else 'not finite'}: training diverged; lower lr "
                    f"(now {config.lr}) or set grad_clip_norm"
                )
            # The scaler skips a step whose fp16 gradients are not finite and halves its scale; healthy
            # gradients never take it under 1 (from 65536, 17 skips in a row), so below 1 no step has
            # been taken for many in a row and nothing is being learnt, however long the run goes.
            if mixed_precision and scaler.get_scale() < 1.0:
                raise TrainingDiverged(
                    f"epoch {epoch_index + 1}: the fp16 gradients were not finite step after step (the gradient "
                    f"scaler skipped them down to a scale of {scaler.get_scale():g}): nothing is being learnt under "
                    f"mixed precision; train on the CPU (settings.device = 'cpu') and report this with the run's log"
                )
            entry = {
                "epoch": epoch_index + 1,
                "loss": epoch_loss,
                "lr": float(optimizer.param_groups[0]["lr"]),
                "seconds": state.epoch_seconds + (time.monotonic() - epoch_clock),
                "frames_used": steps_per_epoch * config.effective_batch,
                "global_step": state.global_step,
                **metrics,
            }
            state.history.append(entry)
            state.epochs_completed = epoch_index + 1
            state.step_in_epoch = 0
            state.epoch_loss_sum = 0.0
            state.epoch_seconds = 0.0
            boundary = "live"
            if task.best_metric not in entry:
                raise ValueError(
                    f"{type(task).__name__}.best_metric {task.best_metric!r} is not in the epoch history "
                    f"(available: {sorted(entry)})"
                )

            due = time.monotonic() - saved_at >= config.checkpoint_seconds
            if due or state.epochs_completed == config.epochs or stop.requested:
                save()
                saved_at = time.monotonic()
                best = best_of(state.history, task.best_metric, task.best_mode)
                if prune_checkpoints(checkpoints_dir, config.keep_last, best["epoch"] if best else None):
                    on_checkpoint(checkpoints_dir)

            session_epoch_seconds.append(entry["seconds"])
            remaining = config.epochs - state.epochs_completed
            eta = remaining * sum(session_epoch_seconds) / len(session_epoch_seconds)
            log(format_epoch_line(
                entry,
                total_epochs=config.epochs,
                eta_seconds=eta,
                batch_size=config.batch_size,
                grad_accum_steps=config.grad_accum_steps,
                device=str(device),
            ))
            write_epoch_scalars(writer, entry)
            if stop.requested:
                if saved_position != (state.epochs_completed, 0):  # the signal came after the check above
                    save()
                log(f"{stop.signal_name} received: epoch checkpoint {last_checkpoint.path} is current; stopping")
                return last_checkpoint, state.history
        return last_checkpoint, state.history

    except BaseException as error:
        _save_after_error(error, boundary, saved_position, state, model, generator, save, log)
        raise
    finally:
        writer.close()


def _save_after_error(error, boundary, saved_position, state, model, generator, save, log) -> None:
    """Keep the progress an exception would otherwise lose, if the state is consistent."""
    name = type(error).__name__
    if isinstance(error, TrainingDiverged):
        log(f"{name}: not checkpointing a diverged model; the last checkpoint stays the newest")
        return
    if boundary is None:
        log(f"{name} while an optimizer step was being applied: the state is half-updated, so no "
            "checkpoint is written; the last one stays the newest")
        return
    if isinstance(boundary, _Boundary):
        restore_rng(boundary.rng, generator)
        _restore_buffers(model, boundary.buffers)
    if saved_position == (state.epochs_completed, state.step_in_epoch) or state.global_step == 0:
        return  # that exact point is already on disk, or nothing was trained yet
    try:
        checkpoint = save()
    except Exception as save_error:  # noqa: BLE001 - the original error matters; this one is secondary
        log(f"{name} during training, and saving a checkpoint failed too: {save_error!r}")
        return
    log(f"{name} during training: saved {checkpoint.path} (epoch {state.epochs_completed + 1}, "
        f"step {state.step_in_epoch}); re-raising")


def best_of(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best epoch by ``metric`` (ties: the earliest); non-finite values never win."""
    if mode not in ("min", "max"):
        raise ValueError(f"best_mode must be 'min' or 'max', got {mode!r}")
    candidates = [entry for entry in history if metric in entry and math.isfinite(entry[metric])]
    if not candidates:
        return None
    sign = 1.0 if mode == "min" else -1.0
    winner = min(candidates, key=lambda entry: (sign * entry[metric], entry["epoch"]))
    return {"metric": metric, "mode": mode, "value": winner[metric], "epoch": winner["epoch"]}


def _already_finished(
    task: TrainTask,
    config: TrainConfig,
    run_key_dir: Path,
    latest: Checkpoint,
    device: torch.device,
    started: float,
    log: Callable[[str], None],
) -> TrainResult:
    """The run has ``config.epochs`` epochs done: return its weights without training."""
    checkpoints_dir = run_key_dir / "checkpoints"
    at_epochs = checkpoints_dir / checkpoint_name(config.epochs, 0)
    weights_path = run_key_dir / f"weights-epoch{config.epochs:04d}.safetensors"
    exact = Checkpoint(at_epochs, config.epochs, 0)
    if at_epochs.is_dir() and checkpoint_problem(exact) is None:
        weights_path = _publish_final_weights(exact, run_key_dir, config.epochs)
    elif not weights_path.is_file():
        raise ValueError(
            f"{run_key_dir} has already trained {latest.epochs_completed} epochs, more than the {config.epochs} "
            f"asked for, and neither the epoch-{config.epochs} checkpoint nor {weights_path.name} was kept; "
            "ask for at least that many epochs or use another run dir"
        )
    _, saved = load_checkpoint(latest)
    history = saved["progress"]["history"][: config.epochs]
    duration = time.monotonic() - started
    log(f"already trained {config.epochs} epochs for resume key {config.resume_key}: returning {weights_path}")
    return _result(task, config, run_key_dir, history, weights_path, duration, latest, device)


def _result(task, config, run_key_dir, history, weights_path, duration, latest, device) -> TrainResult:
    best = best_of(history, task.best_metric, task.best_mode)
    best_weights = None
    if best is not None:
        candidate = run_key_dir / "checkpoints" / checkpoint_name(best["epoch"], 0) / WEIGHTS_FILE
        best_weights = candidate if candidate.is_file() else None
    last = history[-1]
    return TrainResult(
        weights_path=weights_path,
        history=[dict(entry) for entry in history],
        final_metrics={"loss": last["loss"], **evaluation_metrics(last)},
        duration_seconds=duration,
        resumed_from_epoch=latest.epochs_completed if latest is not None else 0,
        epochs=config.epochs,
        best=best,
        best_weights_path=best_weights,
        run_key_dir=run_key_dir,
        device=str(device),
    )


def _publish_final_weights(checkpoint: Checkpoint, run_key_dir: Path, epochs: int) -> Path:
    """The final weights are a copy of the last epoch checkpoint's weights file (same bytes), kept
    outside the pruned checkpoints folder."""
    path = run_key_dir / f"weights-epoch{epochs:04d}.safetensors"
    data = checkpoint.weights_path.read_bytes()
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)
    return path


def _checked_num_samples(task: TrainTask) -> int:
    num_samples = getattr(task, "num_samples", None)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"{type(task).__name__}.num_samples must be a positive int, got {num_samples!r}")
    return num_samples


def _check_weights_to_save(task: TrainTask, model: nn.Module) -> None:
    unknown = sorted(set(task.weights_to_save(model)) - set(model.state_dict()))
    if unknown:
        raise ValueError(
            f"{type(task).__name__}.weights_to_save returns names that are not in model.state_dict(): "
            f"{unknown[:5]}; return state_dict entries so a resume can load them back"
        )


def _check_same_run(saved: dict[str, Any], config: TrainConfig, num_samples: int, checkpoint: Checkpoint) -> None:
    """Same resume key but different weight-determining settings is a caller bug: refuse to mix."""
    if saved.get("format") != STATE_FORMAT:
        raise ValueError(f"{checkpoint.state_path} has state format {saved.get('format')!r}, expected {STATE_FORMAT}")
    differences = [
        f"{name} {saved['config'].get(name)!r} -> {getattr(config, name)!r}"
        for name in RESULT_FIELDS
        if saved["config"].get(name) != getattr(config, name)
    ]
    if saved["num_samples"] != num_samples:
        differences.append(f"num_samples {saved['num_samples']} -> {num_samples}")
    if differences:
        raise ValueError(
            f"{checkpoint.path} has resume key {config.resume_key!r} but was trained with other settings "
            f"({'; '.join(differences)}). The resume key must cover everything that changes the weights: "
            "build it with facepipe.train.resume_key_for(config, data_version=..., ...)"
        )


def load_saved_weights(task: TrainTask, model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Put a saved ``weights_to_save`` dict back into a freshly built model; refuses a mismatch."""
    expected = set(task.weights_to_save(model))
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:5]
        extra = sorted(set(weights) - expected)[:5]
        raise ValueError(
            f"{source} does not match the model built now (missing {missing}, unexpected {extra}); "
            "the model architecture changed under the same resume key"
        )
    model.load_state_dict(weights, strict=False)


def _check_loss_shape(loss: torch.Tensor, task: TrainTask) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{type(task).__name__}.compute_loss must return a 0-d tensor (the batch mean), got {shape}")


def _evaluate(task: TrainTask, model: nn.Module, device: torch.device) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, device)
    model.train()
    clashes = sorted(set(metrics) & set(ENGINE_KEYS))
    if clashes:
        raise ValueError(f"{type(task).__name__}.evaluate returned reserved names {clashes}; rename them (e.g. 'val_loss')")
    return {str(key): float(value) for key, value in sorted(metrics.items())}


def _all_finite(parameters: list[torch.Tensor]) -> bool:
    if not parameters:
        return True
    return bool(torch.stack([torch.isfinite(parameter).all() for parameter in parameters]).all())


def _copy_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def _restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in saved.items():
            buffers[name].copy_(value)


def _other_keys_note(run_key_dir: Path) -> str:
    others = sorted(
        entry.name
        for entry in run_key_dir.parent.iterdir()
        if entry.is_dir() and entry != run_key_dir and list_checkpoints(entry / "checkpoints")
    )
    if not others:
        return ""
    return f" (checkpoints of other resume keys exist: {', '.join(others)}; data or settings changed since)"
