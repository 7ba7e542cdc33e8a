"""The expression critic that teaches the pair adapter to make the swap follow the target's face.

Nothing in the adapter's two reconstruction paths ties the swap (the target's code painted by the
identity's decoder) to the target's expression: the code only has to be readable by both
decoders. So the pair stage trains, beside the adapter, a small regressor that reads five
expression measures off a face — mouth opening, each eye's opening, yaw, pitch, the quantities a
viewer follows — learnt from the real faces of both people, whose measures come from their stored
landmarks (facepipe.evaluate's definitions). The swap of each target face is then scored by that
regressor against the target's own measures: a swap that keeps the mouth closed while the target
speaks, or the eyes open through a blink, costs. The regressor sees faces only through their masks
(the background says nothing about expression), learns only from real faces, and its verdict on
swaps moves only the adapter (``functional_call`` with detached weights, as the discriminator's);
the frozen base decoder can only paint the identity, so following cannot be bought by painting the
target. It is never exported.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

EXPRESSION_NAMES = ("mouth", "left_eye", "right_eye", "yaw", "pitch")


def expression_measures(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """[N, 5] float32 (``EXPRESSION_NAMES``) from crop-space landmarks [N, 478, 2] of crops
    ``crop_size`` px wide; yaw and pitch in degrees."""
    from facepipe.evaluate import eye_openings, head_pose, mouth_opening

    pose = head_pose(landmarks, crop_size)
    measures = np.column_stack([mouth_opening(landmarks), eye_openings(landmarks), pose[:, 0], pose[:, 1]])
    return np.nan_to_num(measures).astype(np.float32)


def standardised(*measures: np.ndarray) -> list[torch.Tensor]:
    """Each set of measures as z-scores of their pooled mean and spread (so the five count alike)."""
    pooled = np.concatenate(measures)
    mean, spread = pooled.mean(axis=0), np.maximum(pooled.std(axis=0), 1e-6)
    return [torch.from_numpy((m - mean) / spread).float() for m in measures]


class ExpressionCritic(nn.Module):
    """[N, 3, S, S] masked BGR in [0, 1] → [N, 5] standardised expression measures. Four strided
    convs and a global average: a face's measures never depend on its batch neighbours."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for channels in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(in_channels, channels, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, len(EXPRESSION_NAMES))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(bgr * 2.0 - 1.0).mean(dim=(2, 3)))


def following_losses(critic: nn.Module, swaps: torch.Tensor, wanted: torch.Tensor, real: torch.Tensor,
                     real_measures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(following loss, critic loss), both mean squared errors, for one optimizer step: the critic
    learns from the real faces only; the swaps are scored through a gradient-free copy of its
    weights, so that term moves only what made the swaps."""
    frozen = {name: parameter.detach() for name, parameter in critic.named_parameters()}
    following = F.mse_loss(functional_call(critic, frozen, (swaps,)).float(), wanted)
    critic_loss = F.mse_loss(critic(real).float(), real_measures)
    return following, critic_loss


class FollowingPairModel(nn.Module):
    """The pair model trained beside its expression critic: one module, so the engine checkpoints,
    resumes and optimises both."""

    def __init__(self, pair: nn.Module, critic: ExpressionCritic):
        super().__init__()
        self.pair = pair
        self.critic = critic
