import os

import pytest
import torch

from dynode.threads import use_threads

# The suite's tests are small, and the suite often shares the machine (with another suite, a
# demo): one torch thread per process unless DYNODE_THREADS (or the older DYNODE_TEST_THREADS)
# says otherwise. Set in the environment as well, so that the dynode commands, sweep points,
# DDP workers and scripts the tests start as subprocesses take the same count.
os.environ.setdefault("DYNODE_THREADS", os.environ.get("DYNODE_TEST_THREADS", "1"))
THREADS = use_threads()
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS.threads))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS.threads))


def pytest_report_header(config):
    return f"{THREADS.describe()}; the processes the tests start inherit it"


@pytest.fixture
def f64():
    """Run a test with float64 as the default dtype (analytic comparisons)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
