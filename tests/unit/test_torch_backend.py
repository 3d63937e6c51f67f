"""TorchModelPool: preprocessing, exclusive leases, lazy copies, hook hygiene."""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

import numpy as np
import pytest
import torch
from torch import nn

from xaiserve.errors import InvalidInput, Overloaded
from xaiserve.methods.base import TorchBackend
from xaiserve.runtime.torch_backend import Preprocessing, TorchModelPool, leftover_hooks

torch.set_num_threads(1)


class Counter:
    """A module factory that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        torch.manual_seed(0)
        return _tiny()


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_to_input_nchw_rgb_matches_the_formula() -> None:
    pool = TorchModelPool(_tiny, value_range=(-1.0, 1.0), mean=(0.1, 0.2, 0.3), std=(0.5, 1.0, 2.0))
    img = np.random.default_rng(0).uniform(0, 255, (2, 4, 5, 3)).astype(np.float32)
    with pool.lease() as b:
        x = b.to_input(img)
    expected = ((-1.0 + 2.0 * img / 255.0) - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 1.0, 2.0])
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


def test_to_input_nhwc_bgr_and_heatmap_sum_over_channels() -> None:
    prep = Preprocessing(layout="NHWC", channel_order="BGR", value_range=(0.0, 255.0),
                         mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 4.0))  # fmt: skip
    pool = TorchModelPool(_tiny, prep)
    img = np.random.default_rng(1).uniform(0, 255, (1, 3, 4, 3)).astype(np.float32)
    with pool.lease() as b:
        x = b.to_input(img)
        heat = b.to_heatmap(x)
    bgr = img[..., ::-1]
    expected = (bgr - np.array([10.0, 20.0, 30.0])) / np.array([1.0, 2.0, 4.0])
    assert x.shape == (1, 3, 4, 3)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(heat, expected.sum(-1), rtol=1e-5, atol=1e-3)
    assert heat.dtype == np.float32 and heat.shape == (1, 3, 4)


def test_lease_satisfies_the_torch_backend_protocol() -> None:
    pool = TorchModelPool(_tiny)
    with pool.lease() as b:
        backend: TorchBackend = b
        assert backend.device == torch.device("cpu") or torch.cuda.is_available()
        assert not backend.module.training


def test_invalid_preprocessing_is_refused() -> None:
    with pytest.raises(InvalidInput):
        Preprocessing(std=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidInput):
        Preprocessing(layout="CHW")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="shape"), TorchModelPool(_tiny).lease() as b:
        b.to_input(np.zeros((4, 4, 3), np.float32))


def test_copies_are_lazy_exclusive_reused_and_bounded() -> None:
    factory = Counter()
    pool = TorchModelPool(factory, copies=2, timeout=0.05)
    assert factory.calls == 0 and not pool.built_copies
    with pool.lease() as a, pool.lease() as b:
        assert a.module is not b.module
        with pytest.raises(Overloaded) as err, pool.lease():
            pass
        assert err.value.reason == "torch_pool_busy"
    with pool.lease() as c:
        assert c.module in (a.module, b.module)
    assert factory.calls == 1 and len(pool.built_copies) == 2


def test_a_waiting_lease_gets_the_copy_when_released() -> None:
    pool = TorchModelPool(_tiny, copies=1, timeout=5.0)
    got: list[nn.Module] = []
    with pool.lease() as first:
        thread = threading.Thread(target=lambda: got.append(pool.lease().__enter__().module))
        thread.start()
        time.sleep(0.05)
        assert not got
    thread.join(timeout=5)
    assert got == [first.module]


def test_concurrent_holders_never_share_a_copy() -> None:
    pool = TorchModelPool(_tiny, copies=2, timeout=10.0)
    in_use: set[int] = set()
    lock = threading.Lock()
    clashes: list[int] = []

    def work() -> None:
        for _ in range(20):
            with pool.lease() as b:
                with lock:
                    if id(b.module) in in_use:
                        clashes.append(id(b.module))
                    in_use.add(id(b.module))
                time.sleep(0.001)
                with lock:
                    in_use.discard(id(b.module))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not clashes and len(pool.built_copies) == 2


def test_hooks_left_by_a_method_are_removed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    pool = TorchModelPool(_tiny, copies=1)
    with caplog.at_level(logging.ERROR), pool.lease() as b:
        seq = cast(nn.Sequential, b.module)
        seq[0].register_forward_hook(lambda *a: None)
        seq[1].register_full_backward_hook(lambda *a: None)
        seq[2].forward = lambda x: x  # an instance override, as canonizers install
        assert len(leftover_hooks(b.module)) == 3
    assert "left hooks" in caplog.text
    with pool.lease() as b:
        assert leftover_hooks(b.module) == []
        out = b.module(torch.ones(1, 3, 2, 2))
    assert out.shape == (1, 2)


def test_hooks_are_cleaned_even_when_the_holder_raises() -> None:
    pool = TorchModelPool(_tiny, copies=1)
    with pytest.raises(RuntimeError), pool.lease() as b:
        b.module.register_forward_pre_hook(lambda *a: None)
        raise RuntimeError("method failed")
    assert all(not leftover_hooks(m) for m in pool.built_copies)


def test_a_failed_build_frees_its_slot() -> None:
    calls: list[int] = []

    def flaky() -> nn.Module:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("conversion failed")
        return _tiny()

    pool = TorchModelPool(flaky, copies=1, timeout=0.5)
    with pytest.raises(RuntimeError, match="conversion failed"), pool.lease():
        pass
    with pool.lease() as b:
        assert b.module(torch.ones(1, 3, 2, 2)).shape == (1, 2)
    assert len(calls) == 2 and len(pool.built_copies) == 1
