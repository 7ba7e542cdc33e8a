"""Epoch bounds (facepipe.train.epochs): small face sets repeated up to a floor, large ones sliced to a
cap so that an epoch costs the same time whatever the face count, every face still trained on, and a
capped run resuming exactly."""

import pytest
import torch

from test_lora import HOLDOUT_EVERY, TINY, moving_faces

from facepipe.assets.identity import IdentityModelConfig
from facepipe.assets.pair import LoraConfig
from facepipe.assets.xseg import XSegConfig
from facepipe.train import TrainConfig, train, train_model
from facepipe.train.epochs import epoch_of_faces, epoch_rows, epoch_size
from facepipe.train.tasks.reconstruction import ReconstructionTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_epoch_size_is_the_face_count_within_its_bounds():
    assert epoch_size(77, 256, 450) == 256  # the README's sample: repeated up to the floor
    assert epoch_size(300, 256, 450) == 300  # a pass over every face
    assert epoch_size(900, 256, 450) == 450  # a 1000-frame video: half of it an epoch
    assert epoch_size(900, 256) == 900  # no cap
    with pytest.raises(ValueError, match=r"max_samples_per_epoch \(100\) must be 0 \(no limit\) or at least samples_per_epoch \(256\)"):
        epoch_size(900, 256, 100)


def test_the_defaults_cap_every_training_at_the_sets_the_presets_were_measured_on():
    # german_news's 450 training faces and obama_late's 158: the quality preset's hour
    assert IdentityModelConfig().max_samples_per_epoch == 450
    assert LoraConfig().max_samples_per_epoch == XSegConfig().max_samples_per_epoch == 160


def test_an_uncapped_epoch_takes_the_positions_around_the_rows():
    rows = torch.arange(100, 300)
    assert torch.equal(epoch_rows(rows, torch.tensor([0, 5, 250]), 7, 256), rows[[0, 5, 50]])


def test_capped_epochs_are_slices_covering_every_face_spread_over_the_whole_set():
    rows = torch.arange(1000, 1900)  # 900 faces in time order, epochs of 450
    positions = torch.randperm(450, generator=torch.Generator().manual_seed(3))  # the engine's order
    first, second, third = (epoch_rows(rows, positions, epoch, 450) for epoch in range(3))
    assert len(set(first.tolist())) == 450  # no face twice within an epoch
    assert sorted(first.tolist() + second.tolist()) == rows.tolist()  # two epochs: every face once
    assert torch.equal(third.sort().values, first.sort().values)  # then the same slices again
    assert not torch.equal(first.sort().values, rows[:450])  # not the first half of the video
    early = (first < 1450).float().mean().item()
    assert 0.4 < early < 0.6  # each slice mixes both halves of the video
    assert torch.equal(epoch_rows(rows, positions, 1, 450), second)  # a function of the epoch alone


def capped_task() -> ReconstructionTask:
    crops, masks, _ = moving_faces("hopper")  # 6 training faces; epochs of 4, unweighted
    return ReconstructionTask.from_faces(crops, masks, TINY, HOLDOUT_EVERY, 0, max_samples_per_epoch=4)


def test_a_capped_identity_training_resumes_exactly(tmp_path):
    assert capped_task().num_samples == 4

    def config(epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=2, lr=2e-3, resume_key="capped", seed=3, cpu_threads=1)

    straight = train(capped_task(), config(3), tmp_path / "straight", log=lambda line: None)
    train(capped_task(), config(1), tmp_path / "resumed", log=lambda line: None)
    resumed = train_model(capped_task(), config(3), tmp_path / "resumed", log=lambda line: None)
    assert resumed.result.resumed_from_epoch == 1
    assert straight.weights_path.read_bytes() == resumed.result.weights_path.read_bytes()


def test_the_training_log_says_how_an_epoch_covers_the_faces(tmp_path):
    lines = []
    train(capped_task(), TrainConfig(epochs=1, batch_size=2, lr=2e-3, resume_key="logged", cpu_threads=1),
          tmp_path, log=lines.append)
    assert "4 samples an epoch (a slice of its 6 training faces, a different one each epoch" in lines[0]
    assert "its 77 training faces repeated" in epoch_of_faces(256, 77) and epoch_of_faces(300, 300) == ""
