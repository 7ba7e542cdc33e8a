"""Helpers for tests that start servers and workers as separate processes."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parent.parent


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_process(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a server in its own process group, so that it and every child can be stopped together."""
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process_tree(process: subprocess.Popen) -> None:
    """SIGTERM the process group (code servers and run workers included), SIGKILL what is left."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for leftover in alive:  # also children that left the group
        leftover.kill()
    psutil.wait_procs(alive, timeout=5)
    process.wait(timeout=5)


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"
