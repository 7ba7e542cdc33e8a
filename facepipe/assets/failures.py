"""How an asset fails: bad input stops at once, transient trouble is retried, interrupts stop.

Dagster's `RetryPolicy` is deliberately not used: it also retries a step that was interrupted
(Ctrl+C, or a run terminated from the UI), so a cancelled training would start again in the
run the user just cancelled, and hold the training slot. Instead every asset is wrapped by
`failure_policy`, which sorts what its body raised:

- bad input (media, user masks, curation.toml, partition keys, pairs.toml, an upstream never built): a Dagster
  `Failure(..., allow_retries=False)` naming the asset and partition; the message underneath
  already names the file and the fix. Retrying cannot help.
- a full disk, a read-only file system or a permission refused: a `Failure(..., allow_retries=False)`
  naming the place (the store, the models folder) and what to do (facepipe.disk). It says the same
  on every attempt.
- transient trouble (I/O errors other than missing files or permissions, timeouts, lost
  connections, a GPU out of memory or reporting a CUDA error): `RetryRequested`, up to
  `TRANSIENT_RETRIES` more attempts with exponential backoff. Training resumes from its last
  checkpoint, so a retry continues rather than starts over.
- anything else (a bug, a wrong config value): fails once, as raised.
- interrupts are not exceptions of this kind (KeyboardInterrupt, Dagster's interrupt error) and
  pass through untouched, so a cancelled run stops.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from dagster import Failure, RetryRequested

from facepipe.curation_file import CurationFileError
from facepipe import disk
from facepipe.labels import UserMaskError
from facepipe.media import MediaError
from facepipe.pairs import PairsFileError
from facepipe.partition_settings import PartitionSettingsError
from facepipe.partitions import InvalidPartitionKey
from facepipe.store import MissingInput

BAD_INPUT_ERRORS = (MediaError, MissingInput, InvalidPartitionKey, UserMaskError, PairsFileError, CurationFileError,
                    PartitionSettingsError)
# OSErrors that say the same thing on every attempt: a file or folder that is not there, is in
# the way, or may not be touched. Retrying them only delays the message.
DETERMINISTIC_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
TRANSIENT_RETRIES = 2
RETRY_DELAY_ENV = "FACEPIPE_RETRY_DELAY_S"
DEFAULT_RETRY_DELAY_S = 15.0


def is_transient(error: BaseException) -> bool:
    """Whether trying the same step again may succeed."""
    if disk.storage_error(error) is not None:  # full, read-only, not allowed
        return False
    if isinstance(error, OSError):  # includes TimeoutError and ConnectionError
        return not isinstance(error, DETERMINISTIC_OS_ERRORS)
    # torch.cuda.OutOfMemoryError, matched by name so that this module does not import torch.
    if type(error).__name__ == "OutOfMemoryError" and type(error).__module__.startswith("torch"):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith("CUDA error")


def retry_delay_seconds(retry_number: int) -> float:
    """Exponential backoff: base, 2 x base, ... (base from FACEPIPE_RETRY_DELAY_S, default 15 s)."""
    base = float(os.environ.get(RETRY_DELAY_ENV, DEFAULT_RETRY_DELAY_S))
    return base * 2**retry_number


def bad_input_failure(where: str, error: Exception) -> Failure:
    return Failure(f"{where}: {error}", allow_retries=False)


def step_label(context) -> str:
    """"identity/frames [hopper]": the asset and partition a log line or error is about."""
    name = context.asset_key.to_user_string()
    return f"{name} [{context.partition_key}]" if context.has_partition_key else name


def places(settings) -> dict:
    """Where an asset writes, for naming a full or read-only disk (the asset's `settings` resource)."""
    if settings is None:
        return {}
    return {"store": (settings.store.root, "FACEPIPE_STORE"), "models folder": (settings.models_path, "FACEPIPE_MODELS")}


def failure_policy(compute: Callable) -> Callable:
    """Wrap an asset's compute function (context first) with the policy above.

    Apply it under `@asset`; `functools.wraps` keeps the signature Dagster reads config and
    resources from.
    """

    @functools.wraps(compute)
    def wrapped(context, *args, **kwargs):
        try:
            return compute(context, *args, **kwargs)
        except Failure:
            raise
        except BAD_INPUT_ERRORS as error:
            raise bad_input_failure(step_label(context), error) from error
        except Exception as error:
            if (refused := disk.storage_error(error)) is not None:
                line = disk.describe(refused, places(kwargs.get("settings")))
                raise Failure(f"{step_label(context)}: {line}", allow_retries=False) from error
            if not is_transient(error):
                raise
            delay = retry_delay_seconds(context.retry_number)
            context.log.warning(
                f"{step_label(context)}: transient error "
                f"({type(error).__name__}: {error}); attempt {context.retry_number + 1} of {TRANSIENT_RETRIES + 1}, "
                + (f"retrying in {delay:g} s" if context.retry_number < TRANSIENT_RETRIES else "giving up")
            )
            raise RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=delay) from error

    wrapped.retries_transient_errors = TRANSIENT_RETRIES  # read by tests and by anyone inspecting the Definitions
    return wrapped
