"""The training engine shared by the identity model, XSeg and the LoRA adapter.

    result = train(MyTask(...), TrainConfig(epochs=60, batch_size=16, lr=1e-3,
                   resume_key=resume_key_for({"batch_size": 16, "lr": 1e-3}, data=..., code=...)),
                   run_dir=Path(".../identity_model/alice"), log=context.log.info)

A task (TrainTask) builds the model and optimizer and scores a batch; the engine owns data
order, random streams, checkpoints, resume, interrupts, telemetry and the device.
"""

from facepipe.train.checkpoints import CorruptCheckpointWarning
from facepipe.train.config import TrainConfig, resume_key_for
from facepipe.train.device import select_device
from facepipe.train.interrupts import TrainingInterrupted
from facepipe.train.loop import TrainingDiverged, TrainResult, train
from facepipe.train.task import TrainTask
from facepipe.train.telemetry import loss_curve_png, loss_table_markdown
from facepipe.train.trained import Trained, TrainingCollapsed, train_model

__all__ = [
    "CorruptCheckpointWarning",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "Trained",
    "TrainingCollapsed",
    "TrainingDiverged",
    "TrainingInterrupted",
    "loss_curve_png",
    "loss_table_markdown",
    "resume_key_for",
    "select_device",
    "train",
    "train_model",
]
