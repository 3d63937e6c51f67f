"""Per-operator builders that turn ONNX nodes into real PyTorch layers.

Each builder receives the node, its already converted inputs and a :class:`BuildContext`
(implemented by :mod:`xaiserve.runtime.onnx_to_torch`) and emits ``torch.fx`` nodes that call
submodules. Standard layers are used wherever one exists (``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm2d``, ``nn.ReLU``, ...) so that rule-based attribution libraries (zennit, captum)
can attach to them by type. Operations without a standard layer get small explicit modules.

One module per op family, each with its layers, its builders and a ``BUILDERS`` table:

* :mod:`.linear` -- ``Conv``, ``Gemm``, ``MatMul``, ``BatchNormalization``;
* :mod:`.activations` -- ``Relu``, ``Clip``, ``Softmax``, ``PRelu``, elementwise math, ...;
* :mod:`.pooling` -- ``MaxPool``, ``AveragePool``, global pools, ``Reduce*``;
* :mod:`.arithmetic` -- ``Add``/``Sub``/``Mul``/``Div``/``Pow``, ``Sum`` (residual sums as
  ``zennit.layer.Sum``);
* :mod:`.shapes` -- ``Reshape``, ``Flatten``, ``Transpose``, ``(Un)Squeeze``, ``Concat``, ...;
* :mod:`.indexing` -- ``Gather``, ``GatherND``, ``Slice``, ``Split``;
* :mod:`.padding` -- ``Pad`` and the explicit/SAME padding convolutions and pools use.

:mod:`.values` defines the converted values and the builder contract, :mod:`.nodes` the
helpers that read a node, :mod:`.registry` the union of the tables.
"""

from xaiserve.runtime.onnx_ops.registry import BUILDERS, CONSTANT_ONLY_OPS, supported_operators
from xaiserve.runtime.onnx_ops.values import (
    PROBE_BATCHES,
    BatchShape,
    BuildContext,
    Builder,
    UnsupportedOperator,
    Value,
)

__all__ = [
    "BUILDERS",
    "CONSTANT_ONLY_OPS",
    "PROBE_BATCHES",
    "BatchShape",
    "BuildContext",
    "Builder",
    "UnsupportedOperator",
    "Value",
    "supported_operators",
]
