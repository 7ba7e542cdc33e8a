"""Training hyperparameters and the resume key that decides which checkpoints a run may reuse."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

# resume_key becomes a folder name under the run dir.
RESUME_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Fields that change what the trained weights are. A checkpoint written with other values of
# these must never be continued, whatever the resume key says (see loop.check_same_run).
RESULT_FIELDS = ("batch_size", "grad_accum_steps", "lr", "seed", "grad_clip_norm")

# Fields a run may change between sessions and still continue its checkpoints: how long to
# train, how many files to keep, where to run. (Moving a CPU run to a GPU continues it too, but
# is then no longer bit-identical to an uninterrupted CPU run.)
FREE_FIELDS = ("epochs", "keep_last", "checkpoint_seconds", "device", "mixed_precision", "cpu_threads", "deterministic", "resume_key")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    # Folder name for this run's checkpoints: a fingerprint of everything that determines the
    # weights *except* the epoch count (make it with resume_key_for), so raising epochs
    # continues the run while changed data or hyperparameters start a fresh one.
    resume_key: str
    seed: int = 0
    # Micro-batches per optimizer step; the effective batch is batch_size * grad_accum_steps.
    grad_accum_steps: int = 1
    grad_clip_norm: float | None = None
    # "auto" picks cuda, then mps, then cpu; or name one ("cpu", "cuda", "cuda:1", "mps").
    device: str = "auto"
    # fp16 autocast + GradScaler, used on CUDA only (CPU and MPS always train in fp32).
    mixed_precision: bool = True
    # Epoch checkpoints kept besides the best one (and the newest, if it is mid-epoch).
    keep_last: int = 3
    # An epoch's end is checkpointed once this many seconds have passed since the last save (0:
    # every epoch); the last epoch, a stop signal and an error are always saved. A kill loses at
    # most this much training, which the next run redoes bit for bit; a full checkpoint of the
    # identity model is ~65 MB, and written after every 4-second epoch it cost ~9 % of the training.
    checkpoint_seconds: float = 0.0
    # torch.use_deterministic_algorithms(True) on CPU while training.
    deterministic: bool = True
    # Fix the CPU thread count for the training (None keeps torch's). CPU kernels may split
    # reductions by thread, so byte-identical weights across machines need the same count.
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum_steps", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"TrainConfig.grad_clip_norm must be None or > 0, got {self.grad_clip_norm!r}")
        if not self.checkpoint_seconds >= 0:
            raise ValueError(f"TrainConfig.checkpoint_seconds must be >= 0, got {self.checkpoint_seconds!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"TrainConfig.cpu_threads must be None or >= 1, got {self.cpu_threads!r}")
        if not RESUME_KEY_PATTERN.fullmatch(self.resume_key):
            raise ValueError(
                f"TrainConfig.resume_key {self.resume_key!r} is not a safe folder name: use letters, "
                "digits, '.', '_' or '-' (at most 128, not starting with '.'), e.g. resume_key_for(...)"
            )

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum_steps

    def as_plain_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resume_key_for(config_or_fields: TrainConfig | dict[str, Any], **inputs: Any) -> str:
    """Fingerprint of the result-determining config fields plus the caller's inputs.

    ``inputs`` are whatever else decides the weights: data version, code version, model
    hyperparameters (width, resolution, ...). The epoch count is left out on purpose. Values
    must be JSON-serialisable; they are hashed in canonical form (sorted keys).

    Accepts a TrainConfig or a plain dict of its fields, because the key usually has to exist
    before the TrainConfig that carries it can be built.
    """
    fields = config_or_fields.as_plain_dict() if isinstance(config_or_fields, TrainConfig) else dict(config_or_fields)
    missing = [name for name in RESULT_FIELDS if name not in fields and name not in _DEFAULTS]
    if missing:
        raise ValueError(f"resume_key_for needs the config fields {missing}")
    payload = {
        "train": {name: fields.get(name, _DEFAULTS.get(name)) for name in RESULT_FIELDS},
        "inputs": inputs,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(TrainConfig)
    if field.default is not dataclasses.MISSING
}
