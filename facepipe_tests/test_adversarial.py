"""The identity model's training schedule: the patch discriminator (who learns from which loss,
when the autoencoder is scored, the saved deliverable) and the random warp switched off after
some epochs, with exact resume across both switches."""

import pytest
import safetensors.torch
import torch

from test_lora import HOLDOUT_EVERY, TINY, moving_faces

from facepipe.models.autoencoder import IdentityAutoencoder
from facepipe.models.discriminator import AdversarialAutoencoder, PatchDiscriminator, adversarial_losses
from facepipe.train import TrainConfig, train, train_model
from facepipe.train.tasks.reconstruction import AdversarialConfig, ReconstructionTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_side_learns_only_from_its_own_loss():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(width=4)
    fake = torch.rand(2, 3, 32, 32, requires_grad=True)
    real = torch.rand(2, 3, 32, 32)
    generator_loss, discriminator_loss, matching = adversarial_losses(discriminator, fake, real)
    assert discriminator(fake).shape == (2, 1, 4, 4)

    for generator_side in (generator_loss, matching):
        fake.grad = None
        generator_side.backward(retain_graph=True)
        assert fake.grad is not None and fake.grad.abs().sum() > 0
        assert all(p.grad is None for p in discriminator.parameters())

    fake.grad = None
    discriminator_loss.backward()
    assert fake.grad is None or fake.grad.abs().sum() == 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())


def test_feature_matching_compares_each_fake_with_its_own_real_face():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(width=4)
    real = torch.rand(2, 3, 32, 32)
    logits, hidden = discriminator(real, with_features=True)
    assert torch.equal(logits, discriminator(real)) and [h.shape[1] for h in hidden] == [4, 8, 16]
    assert adversarial_losses(discriminator, real.clone(), real)[2] == 0
    swapped = adversarial_losses(discriminator, real.flip(0), real)[2]  # right faces, wrong pairing
    noisy = adversarial_losses(discriminator, (real + 0.01 * torch.randn_like(real)).clamp(0, 1), real)[2]
    assert swapped > noisy > 0


def test_feature_matching_left_out_leaves_the_other_losses_as_they_were():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(width=4)
    fake, real = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with_matching = adversarial_losses(discriminator, fake, real)
    without = adversarial_losses(discriminator, fake, real, feature_matching=False)
    assert without[2] is None and with_matching[2] > 0
    assert torch.equal(without[0], with_matching[0]) and torch.equal(without[1], with_matching[1])


def faces_task(weight: float, from_epoch: int, random_warp_epochs: int | None = None) -> ReconstructionTask:
    crops, masks, _ = moving_faces("hopper")
    return ReconstructionTask.from_faces(crops, masks, TINY, HOLDOUT_EVERY, 16,
                                         adversarial=AdversarialConfig(weight=weight, from_epoch=from_epoch,
                                                                       discriminator_width=4),
                                         random_warp_epochs=random_warp_epochs)


def test_random_warp_only_in_the_first_epochs():
    task = faces_task(0.0, 0, random_warp_epochs=2)
    strengths = []
    for epoch in range(4):
        task.start_epoch(epoch)
        strengths.append(task.epoch_augment().elastic_strength)
    assert strengths[:2] == [task.augment.elastic_strength] * 2 and task.augment.elastic_strength > 0
    assert strengths[2:] == [0.0, 0.0]
    always = faces_task(0.0, 0)
    always.start_epoch(100)
    assert always.epoch_augment() == always.augment
    with pytest.raises(ValueError, match="random_warp_epochs"):
        faces_task(0.0, 0, random_warp_epochs=-1)


def autoencoder_gradients(task: ReconstructionTask, model, epoch: int) -> dict[str, torch.Tensor]:
    task.start_epoch(epoch)
    model.zero_grad()
    task.compute_loss(model, torch.arange(4), torch.Generator().manual_seed(1), torch.device("cpu")).backward()
    autoencoder = task.deliverable(model)
    return {name: p.grad.clone() for name, p in autoencoder.named_parameters()}


def test_the_autoencoder_is_scored_only_from_the_configured_epoch():
    plain, adversarial = faces_task(0.0, 0), faces_task(0.5, 2)
    torch.manual_seed(0)
    autoencoder = IdentityAutoencoder(TINY)
    model = AdversarialAutoencoder(autoencoder, PatchDiscriminator(4))
    assert isinstance(plain.build_model(), IdentityAutoencoder)  # weight 0: no discriminator at all
    assert adversarial.deliverable(model) is autoencoder

    reference = autoencoder_gradients(plain, autoencoder, 0)
    before = autoencoder_gradients(adversarial, model, 1)
    after = autoencoder_gradients(adversarial, model, 2)
    assert all(torch.equal(before[name], reference[name]) for name in reference)  # the discriminator learns, unheard
    assert model.discriminator.layers[0].weight.grad.abs().sum() > 0
    assert any(not torch.allclose(after[name], reference[name]) for name in reference)


def test_resume_across_the_switch_is_exact_and_the_deliverable_is_the_autoencoder(tmp_path):
    def config(epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=4, lr=2e-3, resume_key="adv", seed=5, cpu_threads=1)

    straight = train(faces_task(0.5, 1, 1), config(2), tmp_path / "straight", log=lambda line: None)
    train(faces_task(0.5, 1, 1), config(1), tmp_path / "resumed", log=lambda line: None)
    trained = train_model(faces_task(0.5, 1, 1), config(2), tmp_path / "resumed", log=lambda line: None)
    assert trained.result.resumed_from_epoch == 1
    assert straight.weights_path.read_bytes() == trained.result.weights_path.read_bytes()
    saved = safetensors.torch.load_file(str(trained.result.weights_path))
    assert any(name.startswith("discriminator.") for name in saved)  # the checkpoint holds both sides
    assert isinstance(trained.model, IdentityAutoencoder)
    assert trained.model.state_dict().keys() == IdentityAutoencoder(TINY).state_dict().keys()
