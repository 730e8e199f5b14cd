import os

import pytest
import torch

# Tests are small; one intra-op thread avoids oversubscribing the 2-core CI machine.
torch.set_num_threads(int(os.environ.get("DYNODE_TEST_THREADS", "1")))


@pytest.fixture
def f64():
    """Run a test with float64 as the default dtype (analytic comparisons)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
