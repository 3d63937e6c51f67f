"""PyTorch backend for white-box methods: a pool of module copies leased one request at a time.

LRP (zennit) and the modified-gradient methods (captum's GuidedBackprop, Deconvolution) work by
registering hooks on a module and, for LRP, by temporarily merging batch-norm parameters into
the preceding layer. A zennit composite may be registered on one module at a time, so two
requests must never share a module while they attribute. :class:`TorchModelPool` therefore holds
up to ``copies`` copies of the model's module, built lazily on first demand from one factory call
(further copies are deep copies of that pristine template), and lends each to one holder at a
time (:meth:`TorchModelPool.lease`). When every copy is out, a lease waits up to ``timeout``
seconds and then raises :class:`~xaiserve.errors.Overloaded`.

When a lease ends, every submodule is checked for forward/backward hooks and instance-level
``forward`` overrides (what zennit's canonizers and captum leave while active). Anything left
is removed and logged as an error, so a faulty method cannot poison the next request.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xaiserve.contracts.input import ChannelOrder, Layout, Preprocessing
from xaiserve.errors import InvalidInput, Overloaded
from xaiserve.runtime import context as request_context

log = logging.getLogger(__name__)

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchLease:
    """One module copy lent to one holder; satisfies :class:`xaiserve.contracts.models.TorchBackend`."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        prep: Preprocessing,
        batch_bytes: int = 256 * 2**20,
    ) -> None:
        self._module = module
        self._device = device
        self._prep = prep
        self.batch_bytes = batch_bytes
        """Memory budget of one batch through the module (methods size their batches by it)."""
        lo, hi = prep.value_range
        order = [0, 1, 2] if prep.channel_order == "RGB" else [2, 1, 0]
        self._order = torch.tensor(order, device=device)
        mean = torch.tensor(prep.mean, dtype=torch.float32, device=device)
        std = torch.tensor(prep.std, dtype=torch.float32, device=device)
        # v = lo + (hi-lo) p/255, x = (v - mean)/std  ==  p * scale + shift
        self._scale = ((hi - lo) / 255.0) / std
        self._shift = (lo - mean) / std

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def preprocessing(self) -> Preprocessing:
        return self._prep

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` float32 RGB 0..255 → normalised tensor in the model's layout."""
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InvalidInput(f"expected images of shape (N, H, W, 3), got {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(self._device)
        x = x.index_select(3, self._order) * self._scale + self._shift
        if self._prep.layout == "NCHW":
            x = x.permute(0, 3, 1, 2)
        return x.contiguous()

    def to_heatmap(self, attribution: torch.Tensor) -> np.ndarray:
        """Input-space attributions → ``(N, H, W)`` float32 maps (sum over the channel axis)."""
        summed = attribution.detach().sum(dim=self._prep.channel_axis)
        return summed.to(device="cpu", dtype=torch.float32).numpy()


def leftover_hooks(module: nn.Module) -> list[str]:
    """Names of the submodules that still carry hooks or an instance ``forward`` override."""
    found = []
    for name, sub in module.named_modules():
        kinds = [attr for attr in _HOOK_DICTS if _foreign(getattr(sub, attr, None))]
        if "forward" in vars(sub):
            kinds.append("forward override")
        if kinds:
            found.append(f"{name or '<root>'} ({', '.join(kinds)})")
    return found


def _foreign(hooks: object) -> bool:
    """Whether a hook dict holds hooks other than the pool's own forward-pass counter."""
    if not hooks:
        return False
    return any(h is not _count_forward_passes for h in hooks.values())  # type: ignore[attr-defined]


def _remove_hooks(module: nn.Module) -> None:
    for sub in module.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(sub, attr, None)
            if hooks:
                hooks.clear()
        if "forward" in vars(sub):
            del sub.forward


class TorchModelPool:
    """Up to ``copies`` copies of a model's module, each leased exclusively (see module docs).

    ``factory`` builds the eval-mode module mapping the normalised input to raw outputs
    (logits); it is called once, on the first lease. ``timeout`` is how long a lease waits for
    a free copy before :class:`~xaiserve.errors.Overloaded`.
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        preprocessing: Preprocessing | None = None,
        *,
        layout: Layout = "NCHW",
        channel_order: ChannelOrder = "RGB",
        value_range: Sequence[float] = (0.0, 1.0),
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        copies: int = 2,
        timeout: float = 30.0,
        device: torch.device | str | None = None,
        batch_bytes: int = 256 * 2**20,
    ) -> None:
        if copies < 1:
            raise ValueError("the pool needs at least one module copy")
        if preprocessing is None:
            lo, hi = (float(v) for v in value_range)
            preprocessing = Preprocessing(
                layout=layout,
                channel_order=channel_order,
                value_range=(lo, hi),
                mean=tuple(float(m) for m in mean),
                std=tuple(float(s) for s in std),
            )
        self._factory = factory
        self.preprocessing = preprocessing
        self.size = copies
        self.timeout = timeout
        self.batch_bytes = batch_bytes
        self.device = torch.device(device) if device is not None else default_device()
        self._cond = threading.Condition()
        self._build_lock = threading.Lock()
        self._template: nn.Module | None = None
        self._idle: list[nn.Module] = []
        self._copies: list[nn.Module] = []
        self._reserved = 0  # copies being built right now

    @property
    def built_copies(self) -> Sequence[nn.Module]:
        """Every copy built so far (leased or idle); for inspection and tests."""
        with self._cond:
            return tuple(self._copies)

    def _build(self) -> nn.Module:
        with self._build_lock:
            template = self._template
            if template is None:
                template = self._factory()
                template.eval()
                for p in template.parameters():
                    p.requires_grad_(False)
                self._template = template
            with self._cond:
                last = len(self._copies) == self.size - 1  # every other copy exists
                if last:
                    self._template = None  # the last copy is the template itself
            # a deep copy costs ~0.16 s of CPU per ResNet-50 (10 randomised variants of one
            # copy each: 1.6 s of a randomisation test's first call)
            return (template if last else copy.deepcopy(template)).to(self.device)

    def _acquire(self, timeout: float) -> nn.Module:
        def can_go() -> bool:
            return bool(self._idle) or len(self._copies) + self._reserved < self.size

        ctx = request_context.current()
        give_up = time.monotonic() + timeout
        with self._cond:
            # Wake at least every 50 ms to honour the request's cancellation and deadline.
            while not can_go():
                ctx.check()
                left = give_up - time.monotonic()
                remaining = ctx.remaining()
                if left <= 0:
                    raise Overloaded(
                        f"all {self.size} torch module copies are busy (waited {timeout:g} s)",
                        reason="torch_pool_busy",
                    )
                wait = (
                    min(0.05, left) if remaining is None else min(0.05, left, max(remaining, 0.0))
                )
                self._cond.wait(max(wait, 0.001))
            if self._idle:
                return self._idle.pop()
            self._reserved += 1  # build a new copy, outside the lock
        return self._build_for(ctx)

    def _build_for(self, ctx: request_context.RequestContext) -> nn.Module:
        """Build a copy in a helper thread while the request waits for it, checking its
        deadline and cancellation every 50 ms. Building (ONNX → torch, weights) can take
        seconds; a request that gives up leaves the build running, and the finished copy joins
        the idle ones for the next request."""
        handoff: dict[str, Any] = {"waiting": True, "module": None, "error": None}
        done = threading.Event()

        def build() -> None:
            try:
                module = self._build()
            except BaseException as exc:  # handed to the waiting request
                with self._cond:
                    self._reserved -= 1
                    handoff["error"] = exc
                    self._cond.notify()
                done.set()
                return
            with self._cond:
                self._reserved -= 1
                self._copies.append(module)
                if len(self._copies) == self.size:
                    self._template = None  # every copy exists; free the template
                if handoff["waiting"]:
                    handoff["module"] = module
                else:  # the request gave up: the copy waits for the next one
                    self._idle.append(module)
                    self._cond.notify()
            done.set()

        threading.Thread(target=build, name="torch-build", daemon=True).start()
        while not done.wait(0.05):
            try:
                ctx.check()
            except BaseException:
                with self._cond:
                    if handoff["module"] is None and handoff["error"] is None:
                        handoff["waiting"] = False
                        raise
                break  # finished this instant: take it after all
        done.wait()
        if handoff["error"] is not None:
            raise handoff["error"]
        return handoff["module"]  # type: ignore[no-any-return]

    def _release(self, module: nn.Module) -> None:
        left = leftover_hooks(module)
        if left:
            log.error("a method left hooks on the torch module; removing them: %s", left)
            _remove_hooks(module)
        module.eval()
        with self._cond:
            self._idle.append(module)
            self._cond.notify()

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[TorchLease]:
        """Lend one module copy for the ``with`` block (exclusive to the holder).

        The wait for a free copy ends at ``timeout`` (default: the pool's), at the request's
        deadline (DEADLINE_EXCEEDED) or when the client cancels, whichever comes first. While
        the lease is held every forward pass through the module checks the request, so long
        attributions stop within one batch of a deadline or a cancel."""
        module = self._acquire(self.timeout if timeout is None else timeout)
        counter = module.register_forward_pre_hook(_count_forward_passes)
        try:
            yield TorchLease(module, self.device, self.preprocessing, self.batch_bytes)
        finally:
            counter.remove()
            self._release(module)


def _count_forward_passes(module: nn.Module, inputs: tuple[object, ...]) -> None:
    """Count images through the network into the current request (``forward_passes``), and
    stop the request here — between batches — once its deadline passed or its client left.
    A backward pass rides on its forward pass and is not counted separately."""
    ctx = request_context.current()
    ctx.check()
    first = inputs[0] if inputs else None
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        ctx.record_batch(int(first.shape[0]), 0.0, 0.0)
