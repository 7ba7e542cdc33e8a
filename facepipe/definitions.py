"""The Dagster code location: assets, jobs, schedules, sensors and resources."""

import os
from pathlib import Path

import yaml
from dagster import Definitions, ExecutorDefinition, in_process_executor

from facepipe.assets import ASSET_CHECKS, ASSETS
from facepipe.assets.stage import STORE_INPUT, store_input
from facepipe.automation.discovery import media_sensor, pair_job, role_jobs
from facepipe.automation.nightly import nightly_schedules, pairs_after_role_runs
from facepipe.automation.verify import nightly_verify, rebuild_after_verify, verify_job
from facepipe.resources import FacepipeSettings


def step_executor() -> ExecutorDefinition:
    """In-process by default: steps of one partition run one after another anyway, and a process
    per step would spend seconds re-importing MediaPipe and torch, more than a cached step costs.
    FACEPIPE_CELERY_CONFIG=<yaml> hands each step to Celery workers started with the same file
    (`dagster-celery worker start -A dagster_celery.app -y <yaml>`; see deploy/celery.yaml)."""
    config_file = os.environ.get("FACEPIPE_CELERY_CONFIG")
    if not config_file:
        return in_process_executor
    from dagster_celery import celery_executor  # optional: pip install facepipe[celery]

    config = yaml.safe_load(Path(config_file).read_text()) or {}
    return celery_executor.configured(config.get("execution", {}).get("config", {}), name="facepipe_celery")


defs = Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=[*role_jobs, pair_job, verify_job],
    schedules=[*nightly_schedules, nightly_verify],
    sensors=[media_sensor, pairs_after_role_runs, rebuild_after_verify],
    resources={"settings": FacepipeSettings(), STORE_INPUT: store_input},
    executor=step_executor(),
)
