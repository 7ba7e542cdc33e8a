"""How every training asset (identity model, XSeg, LoRA adapter) trains in the store.

`train_in_store` is the one path: the run folder under `<store>/_runs/<model>/<partition>/`,
checkpoints mirrored to an object-storage store, the engine call (facepipe.train.train_model,
so "initial" metrics come from the very model training starts from), the loss curve and the
metadata every training reports. A training asset supplies its Config (a TrainingConfig), a
function that builds its TrainTask from the inputs, and a function that writes its outputs.
"""

from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar

from dagster import AssetExecutionContext, Config, MaterializeResult

from facepipe import checkpoint_mirror
from facepipe.slots import training_slot
from facepipe.assets.stage import code_version_of, input_versions, run_stage
from facepipe.resources import FacepipeSettings
from facepipe.store import ArtifactStore
from facepipe.train import TrainConfig, Trained, TrainTask, resume_key_for, train_model
from facepipe.train.device import default_cpu_threads
from facepipe.train.loop import checkpoints_dir_of

TRAINING_POOL = "training"  # concurrency pool: one training at a time by default (.dagster_home/dagster.yaml)
# Training assets carry the pool as this op tag, not as Dagster's `pool=`: they claim the slot
# themselves, around the training only (facepipe.slots says why).
POOL_TAG = "facepipe/pool"
TRAINING_OP_TAGS = {POOL_TAG: TRAINING_POOL}
# Run tag of a run that nothing else computes beside (`facepipe build` makes one run at a time):
# its trainings take every core (facepipe.train.device.default_cpu_threads).
RUNS_ALONE_TAG = "facepipe/runs_alone"
# A training's progress is checkpointed at most once a minute (and after its last epoch, or when
# it is stopped): a kill costs at most a minute, redone bit for bit, instead of a 65 MB write
# after every few-second epoch (see TrainConfig.checkpoint_seconds).
CHECKPOINT_SECONDS = 60.0


class TrainingConfig(Config):
    """The engine's hyperparameters; each training asset sets its own defaults."""

    epochs: int
    batch_size: int
    grad_accum_steps: int = 1  # effective batch = batch_size * grad_accum_steps
    lr: float
    seed: int = 0
    holdout_every: int = 10  # every n-th face is held out for the metrics
    samples_per_epoch: int = 0  # small face sets are repeated (augmented anew) up to this per epoch
    # Large face sets are sliced to this per epoch (0: no limit), so that an epoch, and a preset's
    # training time, does not grow with the face count (facepipe.train.epochs).
    max_samples_per_epoch: int = 0
    # 0 = every core under `facepipe build`, half of them in runs Dagster launches
    # (facepipe.train.device.default_cpu_threads). The count changes the last bits of the weights
    # (parallel sums in another order), not what the model learns, so it stays out of the cache key.
    cpu_threads: int = 0
    # Settings read only after the last epoch (e.g. how the trained model is merged): left out of
    # the resume key, so changing one reuses the finished training instead of training again.
    after_training: ClassVar[tuple[str, ...]] = ()

    def engine_config(self, device: str, alone: bool = False, **resume_inputs) -> TrainConfig:
        """The engine's config; the resume key covers everything but the epoch count. ``alone``:
        nothing else computes beside this training (see RUNS_ALONE_TAG)."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
            grad_accum_steps=self.grad_accum_steps, device=device, checkpoint_seconds=CHECKPOINT_SECONDS,
            cpu_threads=self.cpu_threads or default_cpu_threads(alone),
            resume_key=resume_key_for(self.model_dump(), **resume_inputs,
                                      settings={k: v for k, v in self.model_dump().items()
                                                if k not in ("epochs", "cpu_threads", *self.after_training)}),
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


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(float(value), 6) for name, value in metrics.items()}


def train_in_store(
    context: AssetExecutionContext,
    settings: FacepipeSettings,
    config: TrainingConfig,
    make_task: Callable[[], TrainTask],
    write: Callable[[Trained, Path], dict[str, Any]],
) -> MaterializeResult:
    """Train (or resume, or reuse from the store) this asset's model and store its outputs.

    `make_task()` builds the task from the inputs (only on a cache miss); `write(trained, out)`
    writes the model's files into `out` and returns its own metadata. The record's config is the
    asset's config plus the kind of device that trains (a GPU build is not a CPU build); the
    resume key covers the same inputs, code version and every setting but the epoch count.
    """
    store, partition = settings.store, context.partition_key
    hyper = config.model_dump()
    record_config = {**hyper, "device": settings.device_kind}
    inputs = input_versions(context, settings, hyper)
    train_config = config.engine_config(settings.device, alone=context.run.tags.get(RUNS_ALONE_TAG) == "true",
                                        inputs=inputs, code=code_version_of(context))

    def build(out: Path) -> dict[str, Any]:
        run_dir = store.partition_dir(f"_runs/{context.asset_key.path[-1]}", partition)
        step_key = context.op_execution_context.get_step_execution_context().step.key
        with training_slot(context.instance, TRAINING_POOL, context.run.run_id, step_key,
                           f"{context.asset_key.to_user_string()} [{partition}]", context.log.info):
            trained = train_model(make_task(), train_config, run_dir, context.log.info,
                                  mirrored_checkpoints(context, store, run_dir, train_config))
        result = trained.result
        result.loss_curve_png(out / "loss_curve.png")
        return {"epochs": result.epochs, "resumed_from_epoch": result.resumed_from_epoch, "device": result.device,
                "duration_s": round(result.duration_seconds, 1),
                # Every epoch's seconds, those of sessions before a resume too (steps and evaluation;
                # not checkpoint writes): what training these epochs costs, however it was split.
                "epochs_s": round(sum(entry["seconds"] for entry in result.history), 1),
                "initial": rounded(trained.initial_metrics),
                "final": rounded(result.final_metrics), **write(trained, out),
                "loss_table_md": result.loss_table_markdown()}

    return run_stage(context, settings, record_config, build, inputs=inputs)
