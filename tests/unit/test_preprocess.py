"""Preprocessing: the network input equals the config's formula, computed independently."""

from __future__ import annotations

import numpy as np

from xaiserve.imaging.preprocess import fit_to_input, to_network_input
from xaiserve.models.config import InputConfig


def test_network_input_formula_nchw_rgb() -> None:
    cfg = InputConfig(
        height=2, width=2, value_range=(0.0, 1.0), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.1)
    )
    img = np.zeros((1, 2, 2, 3), np.float32)
    img[0, 0, 1] = (255.0, 51.0, 0.0)
    x = to_network_input(img, cfg)
    assert x.shape == (1, 3, 2, 2)
    # pixel (0, 1): R = (1 - 0.5)/0.2 = 2.5, G = (0.2 - 0.4)/0.2 = -1, B = (0 - 0.3)/0.1 = -3
    np.testing.assert_allclose(x[0, :, 0, 1], [2.5, -1.0, -3.0], rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 0], [-2.5, -2.0, -3.0], rtol=1e-6)


def test_network_input_bgr_nhwc_and_value_range() -> None:
    cfg = InputConfig(
        height=1, width=1, layout="NHWC", channel_order="BGR", value_range=(-1.0, 1.0)
    )
    img = np.array([[[[255.0, 0.0, 127.5]]]], np.float32)
    x = to_network_input(img, cfg)
    assert x.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(x[0, 0, 0], [0.0, -1.0, 1.0], atol=1e-6)  # B, G, R


def test_fit_stretch_and_center_crop() -> None:
    img = np.zeros((20, 40, 3), np.float32)
    img[:, 10:30] = 255.0  # centre half is white
    stretch = fit_to_input(img, InputConfig(height=10, width=10))
    assert stretch.shape == (10, 10, 3)
    crop = fit_to_input(img, InputConfig(height=10, width=10, resize="center_crop"))
    assert crop.shape == (10, 10, 3)
    # center crop keeps only the white middle; stretch keeps the black borders too
    assert crop.mean() > 240 and stretch.mean() < 160


def test_fit_identity_when_sized() -> None:
    img = np.random.default_rng(0).uniform(0, 255, (5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(fit_to_input(img, InputConfig(height=5, width=6)), img)
