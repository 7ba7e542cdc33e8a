"""Every benchmark still starts: its imports (of facepipe and of the benchmarks beside it) resolve
and its command line parses. Benchmarks need the dev media to measure anything, which no test may
need, so this is what keeps a refactor from breaking one unseen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_the_benchmark_starts_and_explains_itself(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                            cwd=script.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
