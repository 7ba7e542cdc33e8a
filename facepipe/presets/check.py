"""Checking a run config against the jobs before anything runs (needs the Definitions, so it is
kept apart from the loading in facepipe.presets, which the nightly schedules import)."""

from __future__ import annotations

from typing import Any

from dagster import validate_run_config
from dagster._core.errors import DagsterInvalidConfigError

from facepipe.automation.discovery import JOB_OF_GROUP
from facepipe.presets import RunConfig, RunConfigError, for_job


def job_configs(run_config: RunConfig) -> dict[str, dict[str, Any]]:
    """Job name -> its part of the run config, each part checked with Dagster's own validation
    against the job; an op that belongs to no job, an unknown op or field, or a value of the wrong
    type raises RunConfigError (one line)."""
    from facepipe.definitions import defs  # here, not at the top: the Definitions import the nightly, which imports presets

    groups = JOB_OF_GROUP
    parts = {job: for_job(run_config.config, group) for group, job in groups.items()}
    claimed = {op for part in parts.values() for op in part.get("ops", {})}
    if strays := sorted(set(run_config.ops) - claimed):
        raise RunConfigError(f"{run_config.source}: op '{strays[0]}' belongs to no job (op names are "
                             f"<group>__<asset>, group one of {', '.join(groups)}: e.g. identity__identity_model)")
    for job_name, part in parts.items():
        if not part:
            continue
        job = defs.resolve_job_def(job_name)
        try:
            validate_run_config(job, part)
        except DagsterInvalidConfigError as error:
            problems = "; ".join(describe_config_error(job, job_name, each) for each in error.errors)
            raise RunConfigError(f"{run_config.source}: {problems}") from None
    return parts


def describe_config_error(job, job_name: str, error) -> str:
    """Dagster's message for one config error, without the whole expected schema it appends,
    and with the names that are accepted where a name was unknown."""
    path = [entry.field_name for entry in error.stack.entries if hasattr(entry, "field_name")]
    data = error.error_data
    unknown = getattr(data, "field_names", None) or ([data.field_name] if hasattr(data, "field_name") else None)
    if unknown and error.reason.value in ("FIELD_NOT_DEFINED", "FIELDS_NOT_DEFINED"):
        names = ", ".join(f"'{name}'" for name in unknown)
        accepted = ", ".join(accepted_names(job, path)) or "none"
        if path == ["ops"]:
            return f"{names}: no such op in {job_name} (its ops: {accepted})"
        if len(path) == 3 and path[2] == "config":
            return f"{path[1]}: no field {names} (its fields: {accepted})"
        return f"unexpected {names} under {':'.join(path)} (expected: {accepted})"
    return " ".join(error.message.split(" Expected:")[0].split()).rstrip(".")


def accepted_names(job, path: list[str]) -> list[str]:
    config_type = job.run_config_schema.config_type
    for name in path:
        fields = getattr(config_type, "fields", None)
        if not fields or name not in fields:
            return []
        config_type = fields[name].config_type
    return sorted(getattr(config_type, "fields", None) or {})
