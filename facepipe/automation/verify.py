"""The nightly content check: every output in the store against the sha256 of its record.

A cache hit checks only what is cheap (files present at their recorded sizes), and so does the
nightly's change detection, which must decide within a schedule tick. Hashing every output can
take minutes on a large store, so it runs as a job of its own: the schedule `nightly_verify`
(same cron as the rebuilds) launches `verify_job`, whose one op hashes the store like
`facepipe verify` and retires damaged outputs; when it succeeds, the sensor
`rebuild_after_verify` asks the nightly's own change detection again (a retired output now
reads "no output yet") and requests those rebuilds the same night.
"""


from dagster import (
    DagsterRunStatus,
    OpExecutionContext,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SkipReason,
    job,
    op,
    run_status_sensor,
    schedule,
)

from facepipe.automation import schedule_default, sensor_default
from facepipe.automation.discovery import pair_job, role_jobs
from facepipe.automation.nightly import (
    World,
    load_nightly_run_config,
    nightly_cron,
    nightly_timezone,
    pair_requests,
    role_requests,
)
from facepipe.pairs import PairsFileError
from facepipe.partitions import ROLES
from facepipe.resources import FacepipeSettings
from facepipe.store import ArtifactStore

VERIFY_JOB = "verify_job"


def verify_store(store: ArtifactStore) -> tuple[int, list[str]]:
    """Hash every output on this machine, retire the damaged ones; (outputs checked, one line per damaged output)."""
    checked = store.verify(remove=True)
    return len(checked), [f"{artifact.record['asset']} [{artifact.record['partition']}] {artifact.path}: damaged "
                          f"({problem}); removed, `facepipe build` or the nightly rebuilds it"
                          for artifact, problem in checked if problem]


@op(name="verify_store", description="Every output in the store against the sha256 in its record; damaged ones are retired.")
def verify_store_op(context: OpExecutionContext, settings: FacepipeSettings) -> None:
    store = settings.store
    if store.remote:
        context.log.info(f"the store is remote ({store.remote}): this machine checks only its own copies")
    checked, damaged = verify_store(store)
    for line in damaged:
        context.log.warning(line)
    context.log.info(f"store {store.root}: {checked} outputs, "
                     + (f"{len(damaged)} damaged (removed)" if damaged else "all intact"))


@job(name=VERIFY_JOB, description="Check the content of every output in the store (sha256) and retire damaged ones.")
def verify_job():
    verify_store_op()


def verify_schedule(cron: str, timezone: str | None):
    @schedule(name="nightly_verify", cron_schedule=cron, job=verify_job, execution_timezone=timezone,
              default_status=schedule_default(),
              description="Hashes every output in the store (a cache hit checks only presence and sizes); "
                          "rebuild_after_verify then rebuilds what it retired.")
    def nightly_verify(_context: ScheduleEvaluationContext):
        return {}  # one run, no config

    return nightly_verify


nightly_verify = verify_schedule(nightly_cron(), nightly_timezone())


@run_status_sensor(name="rebuild_after_verify", run_status=DagsterRunStatus.SUCCESS, monitored_jobs=[verify_job],
                   request_jobs=[*role_jobs, pair_job], default_status=sensor_default(), minimum_interval_seconds=30,
                   description="When the nightly content check has run, requests the partitions and pairs whose "
                               "outputs it retired (or that changed since), as the nightly schedules would.")
def rebuild_after_verify(context: RunStatusSensorContext, settings: FacepipeSettings):
    world, run_id = World.from_settings(settings, load_nightly_run_config()), context.dagster_run.run_id
    requests = []
    for role in ROLES:
        requests += role_requests(context, settings, world, role, run_key=run_id)[0]
    try:
        requests += pair_requests(context, settings, world, run_key=run_id)[0]
    except PairsFileError as error:
        context.log.warning(f"cannot read the declared pairs: {error}")
    return requests or SkipReason("the content check changed nothing to rebuild")
