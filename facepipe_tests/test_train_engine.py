"""The training engine's contract: exact resume (after SIGKILL, SIGTERM, Ctrl+C, errors and
corrupt checkpoints), resume keys, pruning, gradient accumulation and telemetry.

A tiny MLP on seeded random tensors stands in for the real models: it uses every random stream
the engine must restore (engine generator, torch global via dropout, numpy, python) and has
BatchNorm buffers, so any state the engine forgot to save or restore changes the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from facepipe.train import (
    CorruptCheckpointWarning,
    TrainConfig,
    TrainTask,
    loss_curve_png,
    resume_key_for,
    select_device,
    train,
)
from facepipe.train.checkpoints import checkpoint_problem, list_checkpoints
from facepipe.train.interrupts import TrainingInterrupted
from facepipe.train.trained import TrainingCollapsed, check_not_collapsed

EPOCHS = 4
NUM_SAMPLES = 32
CALLS_PER_EPOCH = 8  # 32 samples / (batch 4 x accumulation 2) = 4 steps of 2 micro-batches
TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


class ToyTask(TrainTask):
    """Noisy regression with dropout and BatchNorm; optional hooks that interrupt it at a call."""

    def __init__(
        self,
        *,
        raise_at_call: int | None = None,
        sigint_at_call: int | None = None,
        sigterm_at_call: int | None = None,
        pause_at_call: int | None = None,
        handshake_dir: Path | None = None,
    ):
        data = torch.Generator().manual_seed(1234)
        self.inputs = torch.randn(NUM_SAMPLES, 16, generator=data)
        self.targets = torch.randn(NUM_SAMPLES, 4, generator=data)
        self.num_samples = NUM_SAMPLES
        self.calls = 0
        self.raise_at_call = raise_at_call
        self.sigint_at_call = sigint_at_call
        self.sigterm_at_call = sigterm_at_call
        self.pause_at_call = pause_at_call
        self.handshake_dir = handshake_dir

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))

    def build_scheduler(self, optimizer, steps_per_epoch):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=0.8)

    def compute_loss(self, model, batch_indices, generator, device):
        self.calls += 1
        self._maybe_interrupt()
        noise = 0.1 * torch.randn(len(batch_indices), 16, generator=generator)
        jitter = 1.0 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        inputs = (self.inputs[batch_indices] + noise) * jitter
        return nn.functional.mse_loss(model(inputs.to(device)), self.targets[batch_indices].to(device))

    def evaluate(self, model, device):
        return {"val_loss": float(nn.functional.mse_loss(model(self.inputs.to(device)), self.targets.to(device)))}

    def _maybe_interrupt(self) -> None:
        if self.calls == self.raise_at_call:
            raise RuntimeError("simulated failure inside compute_loss")
        if self.calls == self.sigint_at_call:
            signal.raise_signal(signal.SIGINT)  # what Ctrl+C in the terminal delivers
        if self.calls == self.sigterm_at_call:
            signal.raise_signal(signal.SIGTERM)
        if self.calls == self.pause_at_call:
            # Tell the parent test we are mid-epoch, then wait for its signal (SIGKILL ends us
            # here; after SIGTERM the parent writes "sent" and we carry on to the step's end).
            (self.handshake_dir / "ready").write_text("ready")
            deadline = time.monotonic() + 60
            while not (self.handshake_dir / "sent").exists() and time.monotonic() < deadline:
                time.sleep(0.005)


class LinearTask(TrainTask):
    """No randomness, no BatchNorm, plain SGD: gradients depend only on which samples a step sees."""

    def __init__(self):
        data = torch.Generator().manual_seed(99)
        self.inputs = torch.randn(NUM_SAMPLES, 8, generator=data)
        self.targets = torch.randn(NUM_SAMPLES, 2, generator=data)
        self.num_samples = NUM_SAMPLES

    def build_model(self):
        return nn.Linear(8, 2)

    def build_optimizer(self, model, lr):
        return torch.optim.SGD(model.parameters(), lr=lr)

    def compute_loss(self, model, batch_indices, generator, device):
        return nn.functional.mse_loss(model(self.inputs[batch_indices]), self.targets[batch_indices])


def toy_config(**overrides) -> TrainConfig:
    fields = {"epochs": EPOCHS, "batch_size": 4, "grad_accum_steps": 2, "lr": 1e-2, "seed": 7, "keep_last": 3}
    fields.update(overrides)
    fields["resume_key"] = resume_key_for(fields, data="toy-v1")
    return TrainConfig(**fields)


def losses(history):
    return [entry["loss"] for entry in history]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 4-epoch run every interrupted run must reproduce bit for bit."""
    result = train(ToyTask(), toy_config(), tmp_path_factory.mktemp("straight"), log=lambda line: None)
    return result.weights_path.read_bytes(), losses(result.history)


def assert_same_as_straight(result, straight) -> None:
    weights, straight_losses = straight
    assert losses(result.history) == straight_losses
    got = safetensors.torch.load(result.weights_path.read_bytes())
    expected = safetensors.torch.load(weights)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs from the uninterrupted run"
    assert result.weights_path.read_bytes() == weights


# The child resets SIGTERM to its default: a process started from a background job or a CI
# runner may inherit it ignored, and these tests are about a plain process (the engine's answer
# to an ignored SIGTERM, TrainingInterrupted, is tested in-process).
CHILD = """
import signal
import sys
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_DFL)
sys.path.insert(0, {tests_dir!r})
from test_train_engine import ToyTask, toy_config
from facepipe.train import train
task = ToyTask(pause_at_call={pause_at_call}, handshake_dir=Path({handshake!r}))
train(task, toy_config(), Path({run_dir!r}), log=lambda line: print(line, flush=True))
"""


def run_child_until_paused(tmp_path: Path, run_dir: Path, pause_at_call: int) -> subprocess.Popen:
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    code = CHILD.format(tests_dir=str(TESTS_DIR), pause_at_call=pause_at_call, handshake=str(handshake), run_dir=str(run_dir))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (handshake / "ready").exists():
        if child.poll() is not None:
            output, _ = child.communicate()
            raise AssertionError(f"training child exited early ({child.returncode}):\n{output}")
        if time.monotonic() > deadline:
            child.kill()
            output, _ = child.communicate()
            raise AssertionError(f"training child never reached the pause point:\n{output}")
        time.sleep(0.01)
    return child


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, straight):
    run_dir = tmp_path / "runs"
    # Pause inside epoch 3 (2 epoch checkpoints on disk, half an epoch of unsaved work), then a
    # real SIGKILL: no handler runs, nothing is flushed.
    child = run_child_until_paused(tmp_path, run_dir, pause_at_call=2 * CALLS_PER_EPOCH + 3)
    child.send_signal(signal.SIGKILL)
    output, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, output
    positions = [checkpoint.position for checkpoint in list_checkpoints(run_dir / toy_config().resume_key / "checkpoints")]
    assert positions[-1] == (2, 0)

    lines = []
    result = train(ToyTask(), toy_config(), run_dir, log=lines.append)
    assert result.resumed_from_epoch == 2
    assert any(line.startswith("resumed at epoch 3/4") for line in lines)
    assert_same_as_straight(result, straight)


def test_sigterm_saves_mid_epoch_and_resume_completes_identically(tmp_path, straight):
    run_dir = tmp_path / "runs"
    # Pause on the first micro-batch of step 2 of epoch 2: the engine must finish that step
    # (its second micro-batch too), save, and exit the way SIGTERM's default would.
    child = run_child_until_paused(tmp_path, run_dir, pause_at_call=CALLS_PER_EPOCH + 3)
    child.send_signal(signal.SIGTERM)
    (tmp_path / "handshake" / "sent").write_text("sent")
    output, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGTERM, output
    assert "SIGTERM received: saved" in output
    checkpoints = list_checkpoints(run_dir / toy_config().resume_key / "checkpoints")
    assert checkpoints[-1].position == (1, 2)
    assert checkpoint_problem(checkpoints[-1]) is None

    lines = []
    result = train(ToyTask(), toy_config(), run_dir, log=lines.append)
    assert any(line.startswith("resumed at epoch 2/4, step 3/4") for line in lines)
    assert_same_as_straight(result, straight)
    # The mid-epoch checkpoint is superseded once later epoch checkpoints exist.
    assert all(checkpoint.is_epoch_end for checkpoint in list_checkpoints(result.checkpoints_dir))


def test_ctrl_c_saves_then_raises_keyboard_interrupt_and_restores_handlers(tmp_path, straight):
    torch.manual_seed(5)
    caller_random_state = torch.get_rng_state()
    handler_before = signal.getsignal(signal.SIGINT)
    term_handler_before = signal.getsignal(signal.SIGTERM)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(KeyboardInterrupt):
        train(ToyTask(sigint_at_call=2 * CALLS_PER_EPOCH + 6), toy_config(), tmp_path, log=lambda line: None)
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert signal.getsignal(signal.SIGTERM) is term_handler_before
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before
    assert torch.equal(torch.get_rng_state(), caller_random_state)
    newest = list_checkpoints(tmp_path / toy_config().resume_key / "checkpoints")[-1]
    assert newest.position == (2, 3)

    assert_same_as_straight(train(ToyTask(), toy_config(), tmp_path, log=lambda line: None), straight)


def test_deterministic_training_skips_the_nan_fill_of_new_tensors_and_restores_it(tmp_path):
    """Deterministic mode's NaN fill of fresh memory costs 3-4 % of a CPU step; training turns it
    off for its own duration only, and the caller's setting comes back."""
    seen = []

    class Watching(ToyTask):
        def compute_loss(self, model, batch_indices, generator, device):
            seen.append(torch.utils.deterministic.fill_uninitialized_memory)
            return super().compute_loss(model, batch_indices, generator, device)

    assert torch.utils.deterministic.fill_uninitialized_memory
    train(Watching(), toy_config(), tmp_path, log=lambda line: None)
    assert seen and not any(seen)
    assert torch.utils.deterministic.fill_uninitialized_memory


def test_sigterm_while_the_caller_ignores_it_still_saves_and_stops(tmp_path, straight):
    """A process that ignores SIGTERM (inherited from a background job): training still saves
    and stops with TrainingInterrupted rather than running on as if nothing happened."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(TrainingInterrupted, match="SIGTERM"):
            train(ToyTask(sigterm_at_call=CALLS_PER_EPOCH + 3), toy_config(), tmp_path, log=lambda line: None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
    assert list_checkpoints(tmp_path / toy_config().resume_key / "checkpoints")[-1].position == (1, 2)
    assert_same_as_straight(train(ToyTask(), toy_config(), tmp_path, log=lambda line: None), straight)


def test_error_mid_step_saves_last_step_boundary_and_reraises(tmp_path, straight):
    # Call 12 is the second micro-batch of step 2 of epoch 2: the first one already moved the
    # BatchNorm statistics and drew random numbers, which the engine must roll back.
    lines = []
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(ToyTask(raise_at_call=CALLS_PER_EPOCH + 4), toy_config(), tmp_path, log=lines.append)
    assert any(line.startswith("RuntimeError during training: saved") for line in lines)
    newest = list_checkpoints(tmp_path / toy_config().resume_key / "checkpoints")[-1]
    assert newest.position == (1, 1)

    assert_same_as_straight(train(ToyTask(), toy_config(), tmp_path, log=lambda line: None), straight)


def test_raising_epochs_continues_the_run(tmp_path, straight):
    first = train(ToyTask(), toy_config(epochs=2), tmp_path, log=lambda line: None)
    assert [entry["epoch"] for entry in first.history] == [1, 2]
    lines = []
    result = train(ToyTask(), toy_config(epochs=4), tmp_path, log=lines.append)
    assert toy_config(epochs=2).resume_key == toy_config(epochs=4).resume_key
    assert result.resumed_from_epoch == 2
    assert any(line.startswith("resumed at epoch 3/4") for line in lines)
    assert [entry["epoch"] for entry in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == first.history
    assert_same_as_straight(result, straight)


def test_epoch_checkpoints_wait_for_checkpoint_seconds_but_the_last_epoch_and_a_stop_always_save(tmp_path, straight):
    rarely = {"checkpoint_seconds": 3600.0}
    train(ToyTask(), toy_config(epochs=2, **rarely), tmp_path, log=lambda line: None)
    checkpoints_dir = tmp_path / toy_config().resume_key / "checkpoints"
    assert [checkpoint.position for checkpoint in list_checkpoints(checkpoints_dir)] == [(2, 0)]  # epoch 1: not due
    with pytest.raises(KeyboardInterrupt):  # Ctrl+C in epoch 3, long before the next save is due
        train(ToyTask(sigint_at_call=6), toy_config(**rarely), tmp_path, log=lambda line: None)
    assert list_checkpoints(checkpoints_dir)[-1].position == (2, 3)
    result = train(ToyTask(), toy_config(**rarely), tmp_path, log=lambda line: None)
    assert [entry["epoch"] for entry in result.history] == [1, 2, 3, 4]  # every epoch's telemetry, saved or not
    assert list_checkpoints(checkpoints_dir)[-1].position == (4, 0)
    assert_same_as_straight(result, straight)


def test_finished_run_returns_at_once_without_training(tmp_path):
    done = train(ToyTask(), toy_config(epochs=2), tmp_path, log=lambda line: None)
    task = ToyTask()
    again = train(task, toy_config(epochs=2), tmp_path, log=lambda line: None)
    assert task.calls == 0
    assert again.weights_path == done.weights_path
    assert again.history == done.history
    assert again.resumed_from_epoch == 2


def test_changed_lr_is_a_different_key_and_starts_fresh(tmp_path):
    train(ToyTask(), toy_config(epochs=2), tmp_path, log=lambda line: None)
    changed = toy_config(epochs=2, lr=2e-2)
    assert changed.resume_key != toy_config(epochs=2).resume_key
    lines = []
    result = train(ToyTask(), changed, tmp_path, log=lines.append)
    assert result.resumed_from_epoch == 0
    assert any(line.startswith("starting fresh at epoch 1/2") and "other resume keys" in line for line in lines)


def test_same_key_with_different_lr_is_refused(tmp_path):
    train(ToyTask(), toy_config(epochs=1), tmp_path, log=lambda line: None)
    reused_key = dataclasses.replace(toy_config(epochs=2), lr=5e-2)
    with pytest.raises(ValueError, match=r"lr 0.01 -> 0.05.*resume key must cover"):
        train(ToyTask(), reused_key, tmp_path, log=lambda line: None)


def test_truncated_newest_checkpoint_is_reported_and_skipped(tmp_path, straight):
    train(ToyTask(), toy_config(epochs=3), tmp_path, log=lambda line: None)
    newest = list_checkpoints(tmp_path / toy_config().resume_key / "checkpoints")[-1]
    assert newest.position == (3, 0)
    data = newest.weights_path.read_bytes()
    newest.weights_path.write_bytes(data[: len(data) // 2])

    lines = []
    with pytest.warns(CorruptCheckpointWarning, match=re.escape(str(newest.weights_path))):
        result = train(ToyTask(), toy_config(epochs=4), tmp_path, log=lines.append)
    assert any(line.startswith("WARNING: skipping corrupt checkpoint") and "truncated" in line for line in lines)
    assert result.resumed_from_epoch == 2
    assert_same_as_straight(result, straight)


def test_unfinished_save_is_skipped_and_its_leftovers_removed(tmp_path):
    train(ToyTask(), toy_config(epochs=2), tmp_path, log=lambda line: None)
    checkpoints_dir = tmp_path / toy_config().resume_key / "checkpoints"
    # What a crash can leave: a temporary folder of a save that never got renamed, and (on a
    # filesystem without atomic renames) a folder whose manifest was never written.
    leftover = checkpoints_dir / ".tmp-ckpt-e0003-s000000-4242"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    unfinished = checkpoints_dir / "ckpt-e0002-s000003"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")

    lines = []
    with pytest.warns(CorruptCheckpointWarning, match="manifest.json is missing"):
        result = train(ToyTask(), toy_config(epochs=3), tmp_path, log=lines.append)
    assert result.resumed_from_epoch == 2
    assert not leftover.exists()
    assert not unfinished.exists()  # pruned once epoch 3 is saved


def test_second_process_on_the_same_run_is_refused(tmp_path):
    from facepipe.train.checkpoints import run_lock

    with run_lock(tmp_path / toy_config().resume_key), pytest.raises(RuntimeError, match="another process is training"):
        train(ToyTask(), toy_config(epochs=1), tmp_path, log=lambda line: None)


def test_diverged_training_stops_without_checkpointing_the_diverged_model(tmp_path):
    config = toy_config(epochs=2, lr=1e6)
    lines = []
    with pytest.raises(FloatingPointError, match="training diverged; lower lr"):
        train(LinearTask(), config, tmp_path, log=lines.append)
    assert any("not checkpointing a diverged model" in line for line in lines)
    # Whatever was saved before the divergence was noticed is a healthy model.
    for checkpoint in list_checkpoints(tmp_path / config.resume_key / "checkpoints"):
        for tensor in safetensors.torch.load_file(str(checkpoint.weights_path)).values():
            assert torch.isfinite(tensor).all()


class BestIsFirstEpoch(ToyTask):
    # "Best" = highest training loss, which is the first epoch's as the loss falls: a way to
    # make the best checkpoint an old one that keep-last-K alone would delete.
    best_mode = "max"


def test_keep_last_k_plus_best(tmp_path):
    result = train(BestIsFirstEpoch(), toy_config(epochs=5, keep_last=2), tmp_path, log=lambda line: None)
    assert max(losses(result.history)) == result.history[0]["loss"]
    assert result.best["epoch"] == 1
    kept = [checkpoint.position for checkpoint in list_checkpoints(result.checkpoints_dir)]
    assert kept == [(1, 0), (4, 0), (5, 0)]
    assert result.best_weights_path == result.checkpoints_dir / "ckpt-e0001-s000000" / "model.safetensors"


def test_a_model_far_worse_than_its_untrained_start_is_refused(tmp_path):
    config = toy_config(epochs=2)
    check_not_collapsed(ToyTask(), {"loss": 1.0}, {"loss": 0.5}, config, tmp_path)  # learnt: passes
    check_not_collapsed(ToyTask(), {"loss": 1.0}, {"loss": 1.2}, config, tmp_path)  # a short run's wobble
    check_not_collapsed(ToyTask(), {}, {"loss": 5.0}, config, tmp_path)  # nothing measured before training
    with pytest.raises(TrainingCollapsed, match=r"loss 2 after 2 epochs is far worse than the untrained model's 1\b.*Lower lr"):
        check_not_collapsed(ToyTask(), {"loss": 1.0}, {"loss": 2.0}, config, tmp_path)
    with pytest.raises(TrainingCollapsed):
        check_not_collapsed(ToyTask(), {"loss": 1.0}, {"loss": float("nan")}, config, tmp_path)
    check_not_collapsed(BestIsFirstEpoch(), {"loss": 0.3}, {"loss": 0.25}, config, tmp_path)  # a score, a little lower
    with pytest.raises(TrainingCollapsed):
        check_not_collapsed(BestIsFirstEpoch(), {"loss": 0.6}, {"loss": 0.3}, config, tmp_path)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    def weights_after(batch_size, grad_accum_steps, lines):
        config = toy_config(epochs=1, batch_size=batch_size, grad_accum_steps=grad_accum_steps, lr=0.1)
        result = train(LinearTask(), config, tmp_path, log=lines.append)
        return safetensors.torch.load_file(str(result.weights_path)), result

    big, big_result = weights_after(8, 1, [])
    accumulation_lines = []
    accumulated, accumulated_result = weights_after(4, 2, accumulation_lines)
    small, _ = weights_after(4, 1, [])
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=0, atol=1e-6)
    assert not torch.allclose(small["weight"], big["weight"], atol=1e-4)
    assert accumulated_result.history[0]["global_step"] == big_result.history[0]["global_step"] == NUM_SAMPLES // 8
    assert any("batch_size=4 grad_accum_steps=2 effective_batch=8" in line for line in accumulation_lines)


def test_telemetry_log_tensorboard_and_curve(tmp_path):
    lines = []
    result = train(ToyTask(), toy_config(epochs=3), tmp_path, log=lines.append)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 3
    pattern = (
        r"epoch 2/3 loss=\S+ lr=\S+ s/epoch=\d+\.\d\d eta=\d+:\d\d:\d\d frames_used=32 "
        r"batch_size=4 grad_accum_steps=2 effective_batch=8 device=cpu val_loss=\S+"
    )
    assert re.fullmatch(pattern, epoch_lines[1]), epoch_lines[1]
    assert [entry["frames_used"] for entry in result.history] == [32, 32, 32]
    assert result.final_metrics.keys() == {"loss", "val_loss"}
    assert result.duration_seconds > 0 and result.device == "cpu"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.tensorboard_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "lr", "seconds_per_epoch", "eval/val_loss"} <= set(scalars)
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("loss")] == pytest.approx(losses(result.history))

    png = result.loss_curve_png(tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).shape[:2] == (600, 640)
    table = result.loss_table_markdown().splitlines()
    assert table[0] == "| epoch | loss | lr | seconds | frames_used | val_loss |"
    assert len(table) == 2 + 3 and table[2].startswith("| 1 | ")
    with pytest.raises(ValueError, match="at least one epoch"):
        loss_curve_png([], tmp_path / "empty.png")


def test_checkpoint_is_safetensors_plus_weights_only_state_with_checksums(tmp_path):
    result = train(ToyTask(), toy_config(epochs=1), tmp_path, log=lambda line: None)
    checkpoint = list_checkpoints(result.checkpoints_dir)[-1]
    state = torch.load(checkpoint.state_path, weights_only=True)
    assert state["progress"]["epochs_completed"] == 1
    assert {"python", "numpy", "torch_cpu", "torch_cuda", "torch_mps", "augmentation"} <= set(state["rng"])
    assert {"optimizer", "scheduler", "scaler", "config", "resume_key"} <= set(state)
    assert state["config"]["lr"] == 1e-2
    manifest = json.loads(checkpoint.manifest_path.read_text())
    import hashlib

    for name, entry in manifest["files"].items():
        assert hashlib.sha256((checkpoint.path / name).read_bytes()).hexdigest() == entry["sha256"]
    assert set(safetensors.torch.load_file(str(checkpoint.weights_path))) == set(ToyTask().build_model().state_dict())
    assert not list(result.checkpoints_dir.glob(".tmp-*"))


def test_resume_key_ignores_epochs_but_not_hyperparameters_or_inputs():
    base = {"batch_size": 4, "lr": 1e-3, "seed": 0}
    key = resume_key_for(base, data="v1")
    assert resume_key_for({**base, "epochs": 50}, data="v1") == key
    assert resume_key_for({**base, "lr": 2e-3}, data="v1") != key
    assert resume_key_for(base, data="v2") != key
    assert resume_key_for(base, data="v1", width=24) != key


def test_config_and_device_validation():
    with pytest.raises(ValueError, match="safe folder name"):
        TrainConfig(epochs=1, batch_size=1, lr=1e-3, resume_key="../elsewhere")
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        TrainConfig(epochs=0, batch_size=1, lr=1e-3, resume_key="k")
    with pytest.raises(ValueError, match="checkpoint_seconds must be >= 0"):
        TrainConfig(epochs=1, batch_size=1, lr=1e-3, resume_key="k", checkpoint_seconds=-1)
    assert select_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(ValueError, match="training device"):
        select_device("tpu")


def test_too_few_samples_for_one_effective_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one effective batch"):
        train(ToyTask(), toy_config(batch_size=32, grad_accum_steps=2), tmp_path, log=lambda line: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_on_cuda_saves_scaler_and_resumes(tmp_path):
    config = toy_config(epochs=2, device="cuda")
    first = train(ToyTask(), dataclasses.replace(config, epochs=1), tmp_path, log=lambda line: None)
    state = torch.load(list_checkpoints(first.checkpoints_dir)[-1].state_path, weights_only=True)
    assert state["scaler"]["scale"] > 0
    lines = []
    result = train(ToyTask(), config, tmp_path, log=lines.append)
    assert result.resumed_from_epoch == 1 and result.device.startswith("cuda")
    assert any("fp16 mixed precision" in line for line in lines)


class ConvTask(TrainTask):
    """A small convolution net that records the layout its activations come out in."""

    def __init__(self):
        data = torch.Generator().manual_seed(5)
        self.inputs = torch.randn(NUM_SAMPLES, 3, 8, 8, generator=data)
        self.num_samples = NUM_SAMPLES
        self.channels_last: set[bool] = set()

    def build_model(self):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def compute_loss(self, model, batch_indices, generator, device):
        inputs = self.inputs[batch_indices].to(device)
        output = model(inputs)
        self.channels_last.add(output.is_contiguous(memory_format=torch.channels_last))
        return nn.functional.l1_loss(output, inputs)


def test_cpu_training_runs_channels_last_and_saves_plain_tensors(tmp_path, monkeypatch):
    task = ConvTask()
    result = train(task, toy_config(epochs=2, device="cpu"), tmp_path, log=lambda line: None)
    assert task.channels_last == {True}
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    saved = safetensors.torch.load_file(str(result.weights_path))
    assert all(tensor.dtype == torch.float32 and tensor.is_contiguous() for tensor in saved.values())
    # The same weights as a run whose model is laid out the usual way, to float rounding.
    plain = ConvTask()
    monkeypatch.setattr("facepipe.train.loop.uses_channels_last", lambda device: False)
    plain_result = train(plain, toy_config(epochs=2, device="cpu"), tmp_path / "plain", log=lambda line: None)
    assert plain.channels_last == {False}
    plain_saved = safetensors.torch.load_file(str(plain_result.weights_path))
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, plain_saved[name], rtol=1e-4, atol=1e-5)


def test_importing_the_engine_flushes_denormals_in_every_cpu_thread():
    # In a fresh process, as a build starts: the import must come before torch's thread pool, whose
    # workers keep the floating-point mode they started with. A product of denormals large enough to
    # be split across both threads must come out all zero (denormal arithmetic stalls training),
    # while the same product in the normal range is kept.
    script = (
        "import torch\n"
        "import facepipe.train\n"
        "torch.set_num_threads(2)\n"
        "tiny, small = torch.full((4_000_000,), 1e-39), torch.full((4_000_000,), 1e-30)\n"
        "print(int((tiny * 0.5).count_nonzero()), int((small * 0.5).count_nonzero()), torch.set_flush_denormal(True))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    if out[2] == "False":
        pytest.skip("this CPU has no flush-to-zero mode")
    assert out[:2] == ["0", "4000000"]


class DenormalProbeTask(LinearTask):
    """Records, at each loss, how many denormal products the training thread keeps (0 when flushed)."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def compute_loss(self, model, batch_indices, generator, device):
        self.kept.append(int((torch.full((1000,), 1e-39) * 0.5).count_nonzero()))  # one thread: too small to split
        return super().compute_loss(model, batch_indices, generator, device)


def test_every_training_flushes_denormals_in_its_own_thread_again(tmp_path):
    # Found in a process that had run an identity job: onnxruntime's first session (the embedder's)
    # clears its thread's mode, and the next training there ran 20-45 % slower. A training must not
    # depend on the import having set it.
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    task = DenormalProbeTask()
    train(task, toy_config(epochs=1), tmp_path, log=lambda line: None)
    assert task.kept and set(task.kept) == {0}
    assert int((torch.full((1000,), 1e-39) * 0.5).count_nonzero()) == 0  # and it stays flushed after


class NanGradientTask(LinearTask):
    """A finite loss whose gradients are NaN on every step (0 · ∞ at a square root of zero)."""

    def compute_loss(self, model, batch_indices, generator, device):
        outputs = model(self.inputs[batch_indices])
        return nn.functional.mse_loss(outputs, self.targets[batch_indices]) + (outputs - outputs.detach()).abs().sum().sqrt()


def test_mixed_precision_that_skips_every_step_is_stopped_with_a_clear_error(tmp_path, monkeypatch):
    # CUDA's mixed precision, emulated on the CPU (fp16 autocast and a GradScaler exist there too).
    monkeypatch.setattr("facepipe.train.loop.uses_mixed_precision", lambda device, wanted: wanted)
    healthy = train(LinearTask(), toy_config(epochs=8, device="cpu"), tmp_path / "healthy", log=lambda line: None)
    assert healthy.history[-1]["loss"] < healthy.history[0]["loss"]
    with pytest.raises(FloatingPointError, match=r"epoch 5: the fp16 gradients were not finite.*nothing is being learnt"):
        train(NanGradientTask(), toy_config(epochs=8, device="cpu"), tmp_path / "nan", log=lambda line: None)
