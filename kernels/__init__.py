"""fusedrnn kernels: Triton kernels and their launchers (tensors in, tensors out; no autograd).

Import ``kernels.lstm``, ``kernels.rnn``, ``kernels.gru``, ``kernels.usegate`` for the launchers and
``kernels.reference`` for the pure-PyTorch references. Set ``TRITON_INTERPRET=1`` before importing to run the
kernels on the CPU.
"""
