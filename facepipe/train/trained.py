"""Train a task and hand back the trained model with its before/after metrics.

The one way every training (identity model, XSeg, pair adapter) runs outside the engine's loop:
the "before" metrics are measured on exactly the model a fresh run starts from (the engine's
own seeding, ``initial_model``), and the returned model holds the final weights, in eval mode.
A training whose held-out metric ends far worse than that start collapsed (measured: the identity
model at lr 1e-3 turned into a flat magenta field the epoch its discriminator started scoring):
it is refused here, before anything is stored, rather than delivered as a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from torch import nn

from facepipe.train.config import TrainConfig
from facepipe.train.determinism import preserved_global_rngs
from facepipe.train.loop import TrainResult, initial_model, load_saved_weights, train
from facepipe.train.task import TrainTask


class TrainingCollapsed(ValueError):
    """The trained model is far worse on held-out data than the untrained one it started from."""


@dataclass
class Trained:
    result: TrainResult
    task: TrainTask
    model: nn.Module  # the task's deliverable with the final weights, eval mode, on the CPU
    initial_metrics: dict[str, float]  # task.evaluate() of the model training started from


def train_model(task: TrainTask, config: TrainConfig, run_dir: Path, log: Callable[[str], None] = print,
                on_checkpoint: Callable[[Path], None] | None = None) -> Trained:
    """Train (or resume, or return the finished run of) ``task`` with the engine (``train``)."""
    cpu = torch.device("cpu")
    with preserved_global_rngs(), torch.no_grad():
        start = initial_model(task, config.seed).eval()
        initial_metrics = task.evaluate(start, cpu)
    del start
    result = train(task, config, run_dir, log=log, on_checkpoint=on_checkpoint)
    check_not_collapsed(task, initial_metrics, result.final_metrics, config, run_dir)
    with preserved_global_rngs():  # building the model draws an initialisation the weights then replace
        model = task.build_model()
    load_saved_weights(task, model, safetensors.torch.load_file(str(result.weights_path)), result.weights_path)
    return Trained(result, task, task.deliverable(model).eval(), initial_metrics)


# How much worse than the untrained model a trained one must end to count as collapsed: a short
# training may end a little below a random start on a score like XSeg's held-out IoU (measured in
# the tests: 0.295 after one epoch against 0.306), a collapsed one ends far off (the identity model
# at lr 1e-3: held-out L1 0.45 against an untrained 0.2).
COLLAPSE_FACTOR = 1.5


def check_not_collapsed(task: TrainTask, initial: dict[str, float], final: dict[str, float], config: TrainConfig,
                        run_dir: Path) -> None:
    """Raise TrainingCollapsed when the task's held-out metric (``best_metric``) ends COLLAPSE_FACTOR
    times worse than before training: an error that many times the untrained model's, a score
    (``best_mode`` "max") that share of it, or not finite. Tasks without a held-out set have no
    such metric before training, and pass."""
    name = task.best_metric
    if name not in initial or name not in final:
        return
    before, after = initial[name], final[name]
    worse = after > COLLAPSE_FACTOR * before if task.best_mode == "min" else after * COLLAPSE_FACTOR < before
    if worse or not math.isfinite(after):
        raise TrainingCollapsed(
            f"{type(task).__name__}: {name} {after:.4g} after {config.epochs} epochs is far worse than the "
            f"untrained model's {before:.4g}: the training collapsed and nothing was stored (a previous build "
            f"stays). Lower lr (now {config.lr:g}) and build again; its checkpoints are under {run_dir}")
