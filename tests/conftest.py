import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/kdiffusion_ref.py


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tests run two at a time under pytest-xdist on 2 cores
    yield
