"""``experiments.sweep`` with the commit column taken from REVISION (``gpu_env.revision``): on a GPU machine the
copied tree has no .git, so git alone would write "unknown".

    python -m experiments.gpu_sweep --grid hidden --out OUT/hidden.csv ...   # any experiments.sweep arguments
"""
from __future__ import annotations

import sys

from . import gpu_env, results


def main(argv=None) -> int:
    results.git_commit = gpu_env.revision  # provenance() looks it up at call time
    from . import sweep

    return sweep.main(argv)


if __name__ == "__main__":
    sys.exit(main())
