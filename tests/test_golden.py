"""Outputs of fixed recipes are identical to those recorded before the issue-11 refactor.

The hashes in tests/data/golden.json were written by ``python tests/golden.py`` at the commit named
there. The script runs in its own process at one thread (a different thread count alone flips a few
pixels by one level), so the comparison does not depend on pytest-xdist's workers.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RECORDED = json.loads((HERE / "data" / "golden.json").read_text())


@pytest.fixture(scope="module")
def current():
    run = subprocess.run([sys.executable, str(HERE / "golden.py")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("group", ["pipeline", "sample", "training", "training_digits", "training_flow"])
def test_outputs_match_the_recorded_hashes(current, group):
    assert current[group] == RECORDED[group]
