"""Train a task and hand back the trained model with its before/after metrics.

The one way every training (identity model, XSeg, pair adapter) runs outside the engine's loop:
the "before" metrics are measured on exactly the model a fresh run starts from (the engine's
own seeding, ``initial_model``), and the returned model holds the final weights, in eval mode.
"""

from __future__ import annotations

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
    with preserved_global_rngs():  # building the model draws an initialisation the weights then replace
        model = task.build_model()
    load_saved_weights(task, model, safetensors.torch.load_file(str(result.weights_path)), result.weights_path)
    return Trained(result, task, task.deliverable(model).eval(), initial_metrics)
