import os
from pathlib import Path

import pytest
import torch

# Two cores on CI: keep intra-op threads fixed so tests behave the same everywhere.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_dir():
    if not SHARED.exists():
        pytest.skip("../shared is not present")
    return SHARED
