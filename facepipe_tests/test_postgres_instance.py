"""The scale-out instance config (deploy/dagster-postgres.yaml) against a real PostgreSQL server.

A throwaway cluster is created with Debian's initdb/pg_ctl on a loopback port; a materialization
written through one instance is read back through another, as a second machine would.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from dagster import DagsterInstance, materialize

from facepipe.assets.prep import build_prep_assets
from facepipe.resources import FacepipeSettings
from facepipe_tests.processes import free_loopback_port

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "dagster-postgres.yaml"
# Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin.
SERVER_BIN = os.pathsep.join([os.environ.get("PATH", ""), *map(str, sorted(Path("/usr/lib/postgresql").glob("*/bin")))])
INITDB, PG_CTL = shutil.which("initdb", path=SERVER_BIN), shutil.which("pg_ctl", path=SERVER_BIN)


@pytest.fixture(scope="module")
def postgres_port():
    if not (INITDB and PG_CTL):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    # PostgreSQL refuses to run as root: as root, run the server as the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="facepipe-pg-", dir="/tmp"))
    if as_user:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_loopback_port()
    subprocess.run([*as_user, INITDB, "-D", str(data), "-U", "dagster", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, PG_CTL, "-D", str(data), "-l", str(folder / "server.log"), "-w", "start",
                    "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}"], check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run([*as_user, PG_CTL, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_runs_and_materializations_are_shared_through_postgres(postgres_port, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_PG_URL", f"postgresql+psycopg2://dagster@127.0.0.1:{postgres_port}/postgres")
    homes = [tmp_path / "machine_a", tmp_path / "machine_b"]
    for home in homes:
        home.mkdir()
        shutil.copy(CONFIG, home / "dagster.yaml")
    folder = tmp_path / "data" / "identities" / "alice"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    settings = FacepipeSettings(data_root=str(tmp_path / "data"), store_root=str(tmp_path / "store"))

    with DagsterInstance.from_config(str(homes[0])) as writer:
        assert type(writer.run_storage).__name__ == "PostgresRunStorage"
        writer.add_dynamic_partitions("identity", ["alice"])
        result = materialize(build_prep_assets("identity")[:1], instance=writer, partition_key="alice",
                             resources={"settings": settings})
        assert result.success
    with DagsterInstance.from_config(str(homes[1])) as reader:
        assert reader.get_dynamic_partitions("identity") == ["alice"]
        run = reader.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
        event = reader.get_latest_materialization_event(build_prep_assets("identity")[0].key)
        assert event is not None and event.run_id == result.run_id
