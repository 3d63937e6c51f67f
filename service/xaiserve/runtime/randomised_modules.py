"""PyTorch modules of cascading randomised variants from two conversions instead of one per
variant (see :mod:`xaiserve.runtime.parameter_randomisation`).

Converting an ONNX graph to PyTorch (:func:`~xaiserve.runtime.onnx_to_torch.convert_onnx`)
costs about as much as four gradient passes on a ResNet-50, so converting every variant would
dominate a randomisation test. The variants share one structure, and a layer's random values
are the same in every variant that randomises it. So :class:`CascadeModules` converts the
original graph and the deepest variant once each, and finds which layer every changed module
tensor comes from by matching a signature of its values (size, sum, sum of squares: the
converter copies, transposes or reshapes an initializer, never mixes values) with the
randomised initializers. Variant ``k`` is then the original module with the tensors of the
first ``k`` layers taken from the deepest variant.

When a changed tensor matches no initializer (or several of different layers), the shortcut is
refused and each variant is converted on its own (:attr:`CascadeModules.shortcut` is False);
the result is the same either way, which ``tests/unit/test_parameter_randomisation.py`` checks.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from xaiserve.runtime.onnx_to_torch import convert_onnx

log = logging.getLogger(__name__)

Signature = tuple[int, float, float]

__all__ = ["CascadeModules"]


def _signature(values: np.ndarray) -> Signature:
    v = np.asarray(values, np.float64).ravel()
    # einsum, not np.dot: BLAS's threads would spin for a product this simple
    return (int(v.size), float(v.sum()), float(np.einsum("i,i->", v, v)))


def _close(a: Signature, b: Signature) -> bool:
    if a[0] != b[0]:
        return False
    scale = max(1.0, a[2] ** 0.5 * a[0] ** 0.5)
    return abs(a[1] - b[1]) <= 1e-6 * scale and abs(a[2] - b[2]) <= 1e-6 * max(1.0, a[2])


class CascadeModules:
    """Builds the PyTorch module of any variant of one cascade.

    ``graph(stop)`` returns the variant graph with ``stop`` layers randomised; ``deepest`` is
    the largest stop that will be asked for; ``layer_tensors[i]`` are the randomised values of
    layer ``i``'s initializers (output first).
    """

    def __init__(
        self,
        graph: Callable[[int], onnx.ModelProto],
        deepest: int,
        layer_tensors: Sequence[Mapping[str, np.ndarray]],
    ) -> None:
        self._graph = graph
        self._deepest = deepest
        self._layer_tensors = layer_tensors
        self._lock = threading.Lock()
        self._ready = False
        self.shortcut = False
        self._original: nn.Module | None = None
        self._random: dict[str, torch.Tensor] = {}
        self._layer_of: dict[str, int] = {}

    def _prepare(self) -> None:
        with self._lock:
            if self._ready:
                return
            original = convert_onnx(self._graph(0))
            deepest = convert_onnx(self._graph(self._deepest))
            layer_of = self._match(original.state_dict(), deepest.state_dict())
            if layer_of is not None:
                self._original = original
                self._random = {k: deepest.state_dict()[k] for k in layer_of}
                self._layer_of = layer_of
                self.shortcut = True
            else:
                log.info("randomised variants: module tensors not matched, converting each one")
            self._ready = True

    def _match(
        self, original: Mapping[str, torch.Tensor], deepest: Mapping[str, torch.Tensor]
    ) -> dict[str, int] | None:
        if original.keys() != deepest.keys():
            return None
        signatures = [
            (layer, _signature(values))
            for layer, tensors in enumerate(self._layer_tensors[: self._deepest])
            for values in tensors.values()
        ]
        layer_of: dict[str, int] = {}
        for key, before in original.items():
            after = deepest[key]
            if before.shape != after.shape or before.dtype != after.dtype:
                return None
            if torch.equal(before, after):
                continue
            sig = _signature(after.detach().cpu().numpy())
            layers = {layer for layer, s in signatures if _close(sig, s)}
            if len(layers) != 1:
                return None
            layer_of[key] = layers.pop()
        return layer_of

    def module(self, stop: int) -> nn.Module:
        """A fresh eval-mode module of the variant with ``stop`` layers randomised."""
        self._prepare()
        if not self.shortcut or self._original is None or stop > self._deepest:
            return convert_onnx(self._graph(stop))
        module = copy.deepcopy(self._original)
        state = module.state_dict()
        for key, layer in self._layer_of.items():
            if layer < stop:
                state[key] = self._random[key]
        module.load_state_dict(state)
        return module.eval()
