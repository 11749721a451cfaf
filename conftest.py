"""Test-session setup. Runs before any test module imports triton kernels: without a CUDA device the kernels
run on the CPU through Triton's interpreter, which must be switched on before the kernels are decorated."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the tests compare the kernels themselves (and count their launches): the first-use self-check, on by default on
# CUDA (models/_selfcheck.py), is off unless a test turns it on (tests/test_selfcheck.py)
os.environ.setdefault("FUSEDRNN_SELFCHECK", "off")

# one pytest-xdist worker per core (pyproject's addopts: -n auto), at most MAX_WORKERS; each worker's torch gets its
# share of the cores, so that two workers on two cores do not run four threads
MAX_WORKERS = 8
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _workers))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may run on, at most ``MAX_WORKERS``."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


torch.backends.cuda.matmul.allow_tf32 = False  # tight fp32 checks on the GPU
torch.backends.cudnn.allow_tf32 = False

# after TRITON_INTERPRET: the checkout's short names (models, kernels, experiments) become fusedrnn's modules
# before any test imports one of them, so a test and the library share one copy of each module
import fusedrnn  # noqa: E402,F401
