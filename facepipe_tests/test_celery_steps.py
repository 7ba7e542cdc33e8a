"""Steps on Celery workers with the artifact store in object storage: the scale-out setup of
deploy/celery.yaml, run for real on one machine.

A Celery worker runs in its own process with its own store cache (as on another machine); the
run is launched with `dagster asset materialize` and FACEPIPE_CELERY_CONFIG, so every step is
sent to the worker and its output reaches the launcher only through the S3 bucket (moto's
server). The broker is Celery's filesystem transport, so no broker server is needed here;
deploy/celery.yaml uses Redis, which changes nothing on facepipe's side.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from facepipe.store import ArtifactStore
from facepipe_tests.processes import PROJECT, log_tail, start_process, stop_process_tree
from facepipe_tests.test_prep_pipeline import STAGES, tiny_clip  # noqa: F401

pytestmark = pytest.mark.slow
pytest.importorskip("dagster_celery", reason="needs dagster-celery (pip install -e '.[test]')")
BIN = Path(sys.executable).parent


def celery_config(root: Path) -> Path:
    broker, results = root / "broker", root / "results"
    broker.mkdir()
    results.mkdir()
    config = {"execution": {"config": {
        "broker": "filesystem://",
        "backend": f"file://{results}",
        "config_source": {"broker_transport_options": {"data_folder_in": str(broker), "data_folder_out": str(broker),
                                                      "control_folder": str(root / "control")}},
    }}}
    path = root / "celery.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_steps_run_on_a_celery_worker_and_share_outputs_through_the_bucket(bucket, tiny_clip, tmp_path):  # noqa: F811
    data = tmp_path / "data" / "identities" / "tiny"
    data.mkdir(parents=True)
    for media in tiny_clip.iterdir():
        (data / media.name).write_bytes(media.read_bytes())
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "FACEPIPE_DATA": str(tmp_path / "data"),
           "FACEPIPE_STORE": bucket, "FACEPIPE_MODELS": str(tmp_path / "models"),
           "FACEPIPE_CELERY_CONFIG": str(celery_config(tmp_path)), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    worker_log = tmp_path / "worker.log"
    worker = start_process([str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                            "-y", env["FACEPIPE_CELERY_CONFIG"], "--", "--concurrency=1"],
                           {**env, "FACEPIPE_STORE_CACHE": str(tmp_path / "worker-cache")}, worker_log)
    try:
        deadline = time.monotonic() + 120
        while " ready." not in (worker_log.read_text(errors="replace") if worker_log.is_file() else ""):
            assert worker.poll() is None and time.monotonic() < deadline, f"worker did not start:\n{log_tail(worker_log)}"
            time.sleep(1)
        launcher_env = {**env, "FACEPIPE_STORE_CACHE": str(tmp_path / "launcher-cache")}
        subprocess.run([str(BIN / "facepipe"), "register"], env=launcher_env, cwd=PROJECT, check=True, capture_output=True)
        run = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "facepipe.definitions",
                              "--select", '+key:"identity/faces"', "--partition", "tiny"],
                             env=launcher_env, cwd=PROJECT, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + log_tail(worker_log)
    finally:
        stop_process_tree(worker)

    launcher = run.stdout + run.stderr
    steps = [f"identity__{stage}" for stage in STAGES]
    for step in steps:
        assert f'Submitting celery task for step "{step}"' in launcher
    # The worker ran every step and built every output in its own cache ...
    worker_text = worker_log.read_text(errors="replace")
    assert len(re.findall(r"Task execute_plan\[[^\]]+\] succeeded", worker_text)) == len(steps)
    assert all(f"identity/{stage}[tiny]: built" in worker_text for stage in STAGES)
    assert not (tmp_path / "launcher-cache").exists()
    # ... and another machine finds them in the bucket.
    elsewhere = ArtifactStore(bucket, cache=tmp_path / "elsewhere")
    faces = elsewhere.current("identity/faces", "tiny")
    assert (faces.path / "faces.npy").is_file() and faces.reused


def test_the_shipped_celery_config_is_valid_executor_config(monkeypatch):
    """deploy/celery.yaml (Redis) passes the executor's own schema, and the code location picks it up."""
    from dagster_celery.cli import get_validated_config

    from facepipe.definitions import step_executor

    shipped = PROJECT / "deploy" / "celery.yaml"
    validated = get_validated_config(str(shipped))
    assert validated["broker"].startswith("redis://") and validated["config_source"]["task_acks_late"] is True
    monkeypatch.setenv("FACEPIPE_CELERY_CONFIG", str(shipped))
    assert step_executor().name == "facepipe_celery"
    monkeypatch.delenv("FACEPIPE_CELERY_CONFIG")
    assert step_executor().name == "in_process"
