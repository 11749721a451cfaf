"""The package's own dependencies (what the README's main command installs, without the test extra) are
enough for the CPU path: Triton's interpreter needs numpy<2.4, and a numpy it cannot run with gives a clear
error instead of an interpreter traceback in every row. (.ci/fresh_env_main.sh runs the main command itself
in a new virtual environment.)"""
import sys
from pathlib import Path

import pytest

from kernels._common import check_interpreter_numpy

ROOT = Path(__file__).resolve().parent.parent


def _project():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_main_dependencies_pin_numpy_for_the_interpreter():
    deps = [d.replace(" ", "") for d in _project()["dependencies"]]
    assert "numpy<2.4" in deps, deps


def test_interpreter_numpy_check():
    check_interpreter_numpy("2.3.5", "3.6.0")
    check_interpreter_numpy("2.4.1", "3.7.0")
    with pytest.raises(RuntimeError, match=r"numpy<2\.4"):
        check_interpreter_numpy("2.4.0", "3.6.0")


def test_ci_runs_the_main_command_in_a_fresh_env():
    run = (ROOT / ".ci" / "run").read_text()
    assert ".ci/fresh_env_main.sh" in run or "fresh_env_main.sh" in run
    script = (ROOT / ".ci" / "fresh_env_main.sh").read_text()
    assert "python3 -m venv" in script
    assert 'pip install -q torch==2.13.0 triton==3.6.0 -e .\n' in script
    assert "python -m experiments.sweep --plot" in script
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch==2.13.0 triton==3.6.0 -e . && python -m experiments.sweep --plot" in readme
