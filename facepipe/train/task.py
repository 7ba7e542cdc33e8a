"""What a model family hands the training engine: how to build it and how to score a batch.

The engine owns everything that must be identical between an uninterrupted run and a resumed
one (data order, random streams, optimizer steps, checkpoints); a task only answers questions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class TrainTask(ABC):
    """Subclass per model family (identity autoencoder, XSeg U-Net, LoRA adapter).

    Set ``num_samples`` (the training set size: the engine draws batch indices in
    ``range(num_samples)``). Build everything from seeded state: the engine seeds the global
    RNGs before ``build_model`` so a fresh run's initial weights are reproducible.
    """

    num_samples: int
    # The training faces an epoch's samples come from, where the task knows them (shown in the
    # engine's first log line when an epoch repeats or slices them: facepipe.train.epochs).
    training_faces: int | None = None
    # Which history entry picks the "best" checkpoint: "loss" (the epoch's mean training loss)
    # or a key returned by evaluate(); and whether lower or higher is better.
    best_metric: str = "loss"
    best_mode: str = "min"

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A new model on the CPU; the engine moves it to the training device."""

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """Default: AdamW over the parameters that require gradients (frozen ones stay out), its
        fused kernel: one pass over all of them instead of a dozen small ops per tensor (measured
        on 2 CPU cores: the identity model's update 32 ms -> 5 ms, a tenth of a training step)."""
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Optional; stepped once per optimizer step. It must not depend on the epoch count:
        raising epochs continues the same run, so the schedule of the first epochs must not
        change when more are added (warm-up + constant, or step decay by epochs, are fine)."""
        return None

    @abstractmethod
    def compute_loss(
        self,
        model: nn.Module,
        batch_indices: torch.Tensor,
        generator: torch.Generator,
        device: torch.device,
    ) -> torch.Tensor:
        """Mean loss of the samples ``batch_indices`` (a CPU int64 tensor), as a 0-d tensor.

        Draw augmentation randomness from ``generator`` (a CPU generator the engine seeds and
        checkpoints), then move the batch to ``device``. Runs under autocast on CUDA.
        """

    def start_epoch(self, epoch: int) -> None:
        """Called by the engine before each epoch's steps (0-based; on a resume, before the rest of
        the epoch it resumes in). A task whose loss changes over training (a term switched on at
        some epoch) keys it here on the epoch index, never on the run's epoch count, so a resumed
        or extended run trains exactly as an uninterrupted one."""

    def deliverable(self, model: nn.Module) -> nn.Module:
        """The part of the trained model that the asset writes (default: all of it); e.g. the
        autoencoder without the discriminator it was trained against."""
        return model

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Optional held-out metrics after each epoch (the model is in eval mode, no grad)."""
        return {}

    def weights_to_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors written to checkpoints and to the final weights file.

        Default: the whole state dict. A LoRA task returns only the adapter tensors; whatever
        is left out must come back identical from build_model() (e.g. a frozen base loaded
        from its own file), because a resumed run rebuilds it that way.
        """
        return model.state_dict()
