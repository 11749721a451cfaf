"""Export paths other than torch.export / torch.compile (which trace the custom ops as they are).

- ``torch.onnx.export``: every backend resolves to the reference during export (``resolve_backend``), so
  the ONNX graph holds standard ops.
- ``torch.jit.trace``: the fused forward keeps its backward's tensors under tracing (``needs_grad``).
- ``torch.jit.script``: not supported (the forward handles PackedSequence, hooks into custom ops and
  Triton launchers that TorchScript cannot compile); ``NoScript`` makes it fail at once, naming what works.
"""
from __future__ import annotations


class NoScript:
    """Mixin: ``torch.jit.script`` on the module, or on a model holding it, raises a clear RuntimeError."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"fusedrnn.{type(self).__name__} cannot be compiled by torch.jit.script (TorchScript cannot compile "
            "its custom ops and Triton launchers). Use torch.compile (fullgraph=True works), torch.export "
            "(then ONNX: torch.onnx.export) or torch.jit.trace; or script a model with torch.nn's modules "
            "(a fusedrnn state_dict loads into them unchanged)."
        )
