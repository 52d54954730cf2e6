import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/kdiffusion_ref.py


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tests run two at a time under pytest-xdist on 2 cores
    yield


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny shapes model (the ``tiny`` preset, 4 steps): the base that LoRA, ControlNet and
    IP-Adapter tests adapt."""
    from difflab.train import Trainer, preset
    config = preset("tiny").replace(threads=1, max_steps=4, checkpoint_every=0)
    return Trainer(config, tmp_path_factory.mktemp("tiny-base") / "run", log=lambda *a: None).fit()
