"""Partition discovery: register folders as dynamic partitions and notice changed media."""

from __future__ import annotations

import json

from dagster import (
    AssetSelection,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    define_asset_job,
    sensor,
)

from facepipe.automation import sensor_default
from facepipe.media import folder_signature
from facepipe.partitions import PARTITIONS, ROLES, discover, media_dir
from facepipe.resources import FacepipeSettings


def role_job_name(role: str) -> str:
    return f"{role}_job"


# One job per role: every asset of that role's group for one partition. Unchanged stages are
# cache hits in the store, so running the whole role after a media change costs only the change.
role_jobs = [
    define_asset_job(
        role_job_name(role),
        selection=AssetSelection.groups(role),
        description=f"Build every {role} asset for one {role} partition.",
    )
    for role in ROLES
]

PAIR_JOB = "pair_job"
# group ("identity", "target", "pair") -> the job that builds it: what the CLI runs and the schedules request
JOB_OF_GROUP = {**{role: role_job_name(role) for role in ROLES}, "pair": PAIR_JOB}
pair_job = define_asset_job(PAIR_JOB, selection=AssetSelection.groups("pair"),
                            description="Build the LoRA adapter and the published swap model for one identity|target pair.")


@sensor(
    name="media_sensor",
    minimum_interval_seconds=30,
    default_status=sensor_default(),
    jobs=role_jobs,
    description="Registers folders under data/identities and data/targets as partitions and "
    "requests a data-preparation run when a partition's media change.",
)
def media_sensor(context: SensorEvaluationContext, settings: FacepipeSettings) -> SensorResult:
    seen = json.loads(context.cursor) if context.cursor else {}
    partition_requests, run_requests = [], []
    for role in ROLES:
        found = discover(settings.data_path, role)
        for folder, reason in found.rejected:
            context.log.warning(f"skipping {role} folder '{folder}': {reason}")
        known = set(context.instance.get_dynamic_partitions(PARTITIONS[role].name))
        new = [key for key in found.keys if key not in known]
        if new:
            context.log.info(f"new {role} partitions: {', '.join(new)}")
            partition_requests.append(PARTITIONS[role].build_add_request(new))
        for key in found.keys:
            signature = folder_signature(media_dir(settings.data_path, role, key))
            if seen.get(f"{role}/{key}") != signature:
                seen[f"{role}/{key}"] = signature
                run_requests.append(
                    RunRequest(run_key=f"{role}/{key}/{signature[:16]}", job_name=role_job_name(role), partition_key=key)
                )
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests, cursor=json.dumps(seen, sort_keys=True))
