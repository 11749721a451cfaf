"""fusedrnn experiments: benchmark sweeps against cuDNN (``python -m experiments.sweep``) and plots from CSV
(``python -m experiments.plot``)."""
