"""Parameter counts: the one counter every model, adapter budget and metadata table uses."""

from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
