"""What an installed copy (``pip install .``) meets that a checkout's test session does not: ``fusedrnn`` imported
first, by a program or by ``python -m fusedrnn.experiments.<job>``, in a process where nothing set
``TRITON_INTERPRET``; and the optional dependency of the study's digits task."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusedrnn import GRU

ROOT = Path(__file__).resolve().parents[1]

# as `python -m fusedrnn.experiments.sweep` runs it: the package first, then the job's module, then a triton row
_FRESH = """
import os, torch
import fusedrnn.experiments.sweep
from fusedrnn import GRU
assert os.environ.get("TRITON_INTERPRET") == "1", os.environ.get("TRITON_INTERPRET")
torch.manual_seed(0)
fused, ref = GRU(3, 4, backend="triton"), GRU(3, 4, backend="reference")
ref.load_state_dict(fused.state_dict())
x = torch.randn(2, 1, 3)
torch.testing.assert_close(fused(x)[0], ref(x)[0])
print("ok")
"""


def test_fusedrnn_imported_first_without_a_gpu_runs_the_triton_backend(tmp_path):
    """Importing fusedrnn where no GPU is visible and TRITON_INTERPRET is unset switches the interpreter on
    before the kernels are decorated, so an installed sweep (or a program) runs backend="triton" on the CPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _FRESH], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_triton_backend_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs Triton's interpreter: set TRITON_INTERPRET=1 before importing"):
        GRU(3, 4, backend="triton")(torch.randn(2, 1, 3))


def test_digits_task_without_scikit_learn_says_what_to_install(monkeypatch, tmp_path, capsys):
    from experiments import tasks

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now fails, as where it is not installed
    rc = tasks.main(["--smoke", "--tasks", "digits", "--models", "rnn", "--out", str(tmp_path)])
    assert rc == 2 and "pip install scikit-learn" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
