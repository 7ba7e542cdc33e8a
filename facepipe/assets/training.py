"""Run config and checkpoint mirroring shared by the training assets (identity model, XSeg, LoRA adapter)."""

from pathlib import Path, PurePosixPath
from typing import Callable

from dagster import AssetExecutionContext, Config

from facepipe import checkpoint_mirror
from facepipe.store import ArtifactStore
from facepipe.train import TrainConfig, resume_key_for
from facepipe.train.device import default_cpu_threads
from facepipe.train.loop import checkpoints_dir_of

TRAINING_POOL = "training"  # concurrency pool: one training at a time by default (.dagster_home/dagster.yaml)


class TrainingConfig(Config):
    """The engine's hyperparameters; each training asset sets its own defaults."""

    epochs: int
    batch_size: int
    grad_accum_steps: int = 1  # effective batch = batch_size * grad_accum_steps
    lr: float
    seed: int = 0
    holdout_every: int = 10  # every n-th face is held out for the metrics
    samples_per_epoch: int = 0  # small face sets are repeated (augmented anew) up to this per epoch
    cpu_threads: int = 0  # 0 = half the cores (see facepipe.train.device.default_cpu_threads)

    def engine_config(self, device: str, **resume_inputs) -> TrainConfig:
        """The engine's config; the resume key covers everything but the epoch count."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
            grad_accum_steps=self.grad_accum_steps, device=device, cpu_threads=self.cpu_threads or default_cpu_threads(),
            resume_key=resume_key_for(self.model_dump(), **resume_inputs,
                                      settings={k: v for k, v in self.model_dump().items() if k not in ("epochs", "cpu_threads")}),
        )


def mirrored_checkpoints(context: AssetExecutionContext, store: ArtifactStore, run_dir: Path,
                         train_config: TrainConfig) -> Callable[[Path], None] | None:
    """With the store in object storage: fetch the bucket's newest checkpoint of this run when it
    is further along than this machine's, and return the engine's `on_checkpoint` hook that
    mirrors the checkpoints after every save. None (nothing to do) for a local store."""
    if store.remote is None:
        return None
    checkpoints_dir = checkpoints_dir_of(run_dir, train_config)
    relative = PurePosixPath(checkpoints_dir.relative_to(store.root).as_posix())
    try:
        if name := checkpoint_mirror.pull(store.remote, relative, checkpoints_dir):
            context.log.info(f"fetched checkpoint {name} from {store.remote.url}: training continues from it")
    except Exception as error:  # the bucket is out of reach: train from what this machine has
        context.log.warning(f"could not fetch checkpoints from {store.remote.url} ({error}); "
                            "training starts from this machine's own checkpoints, if any")

    def push(folder: Path) -> None:
        try:
            checkpoint_mirror.push(store.remote, relative, folder)
        except Exception as error:  # the checkpoint is safe on this disk: a network hiccup must not stop training
            context.log.warning(f"could not mirror checkpoints to {store.remote.url} ({error}); training goes on")

    return push
