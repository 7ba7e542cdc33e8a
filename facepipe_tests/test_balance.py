"""Balanced sampling (facepipe.train.balance): rare poses and expressions are drawn more often,
reproducibly, and nothing is dropped."""

import numpy as np
import torch

from facepipe.train.balance import MAX_WEIGHT, draw_rows, rarity_weights


def blinking_set(faces: int = 200, blinks: int = 4) -> np.ndarray:
    """[faces, 2] measures: eye opening ~0.3 with a few blinks at 0.05, mouth spread evenly."""
    rng = np.random.default_rng(0)
    eyes = rng.normal(0.3, 0.01, faces)
    eyes[:blinks] = 0.05
    return np.column_stack([eyes, np.linspace(0.0, 0.08, faces)])


def test_rare_faces_weigh_more_evenly_spread_ones_alike_and_power_zero_is_uniform():
    measures = blinking_set()
    weights = rarity_weights(measures, 0.5).numpy()
    assert np.allclose(weights[:4], np.sqrt((200 / 8) / 4))  # the blinks: a bin expected to hold 25 holds 4
    assert np.median(weights[4:]) == 1.0
    assert weights.min() >= 1.0 and weights.max() <= MAX_WEIGHT
    assert np.array_equal(rarity_weights(measures, 0.0).numpy(), np.ones(len(measures)))
    even = np.column_stack([np.linspace(0, 1, 80)] * 2)
    assert np.allclose(rarity_weights(even, 0.5).numpy(), 1.0)  # nothing lopsided: nothing favoured
    constant = np.column_stack([np.full(10, 0.3), np.linspace(0, 1, 10)])
    assert np.isfinite(rarity_weights(constant, 1.0).numpy()).all()


def test_weighted_draws_follow_the_weights_and_repeat_per_generator():
    rows = torch.arange(100, 300)
    weights = rarity_weights(blinking_set(), 0.5)
    batch = torch.arange(4000)
    drawn = draw_rows(rows, weights, batch, torch.Generator().manual_seed(7), 0, 4000)
    assert torch.equal(drawn, draw_rows(rows, weights, batch, torch.Generator().manual_seed(7), 0, 4000))
    blink_share = torch.isin(drawn, rows[:4]).float().mean().item()
    expected = (weights[:4].sum() / weights.sum()).item()
    assert abs(blink_share - expected) < 0.02 and blink_share > 2 * 4 / 200
    # unweighted: the engine's order, untouched (facepipe.train.epochs)
    assert torch.equal(draw_rows(rows, None, torch.tensor([0, 5, 250]), torch.Generator(), 3, 256), rows[[0, 5, 50]])
