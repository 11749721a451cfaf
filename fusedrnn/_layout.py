"""Where ``fusedrnn.models`` / ``fusedrnn.kernels`` / ``fusedrnn.experiments`` live, in an installed copy and
in a source checkout, and why one checkout never holds two copies of a module.

Installed (``pip install .``), setuptools maps the top-level folders ``models/``, ``kernels/``,
``experiments/`` of the repository to ``fusedrnn/models`` ... (pyproject's ``package-dir``): only the name
``fusedrnn`` is installed, so a user's own ``models`` package never meets ours.

In a source checkout (``PYTHONPATH=.`` or the repository root as the working directory) the folders sit beside
``fusedrnn/``. ``install()`` then puts a finder at the front of ``sys.meta_path`` that

- loads ``fusedrnn.<sub>`` from the folder ``<root>/<sub>``, and
- resolves the short names ``models``, ``kernels``, ``experiments`` (and their submodules) to the same module
  objects as ``fusedrnn.<sub>``, but only where the import system would find *our* folder for that name: a
  user's ``models`` earlier on ``sys.path`` stays theirs.

So ``import models`` and ``import fusedrnn.models`` in a checkout are one module, with one set of custom ops and
one CUDA-graph cache.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

SUBPACKAGES = ("models", "kernels", "experiments")


class _Alias(importlib.abc.Loader):
    """Loader that returns an already importable module under a second name."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system overwrites __spec__; exec_module restores it
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: str):
        self.root = root

    def _ours(self, sub: str) -> str:
        return os.path.join(self.root, sub)

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head == "fusedrnn" and rest in SUBPACKAGES:
            init = os.path.join(self._ours(rest), "__init__.py")
            return importlib.util.spec_from_file_location(fullname, init,
                                                          submodule_search_locations=[self._ours(rest)])
        if head not in SUBPACKAGES:
            return None
        if not rest:  # the short top-level name: ours only where the path search would find our folder
            spec = importlib.machinery.PathFinder.find_spec(head, sys.path)
            if spec is None or not spec.submodule_search_locations or \
                    os.path.realpath(list(spec.submodule_search_locations)[0]) != os.path.realpath(self._ours(head)):
                return None
        elif sys.modules.get(head) is not sys.modules.get(f"fusedrnn.{head}") or head not in sys.modules:
            return None  # a submodule of a package that is not our alias
        return importlib.util.spec_from_loader(fullname, _Alias(f"fusedrnn.{fullname}"))


def install(package_dir: str) -> None:
    """Set up checkout imports when the subpackages are not inside ``package_dir`` (see the module docstring)."""
    if os.path.isdir(os.path.join(package_dir, "models")):
        return  # an installed copy: the subpackages are real subfolders
    root = os.path.dirname(os.path.abspath(package_dir))
    if any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _CheckoutFinder(root))
