"""Prediction difference: evidence functions, Algorithm 3 (regional) and Algorithm 2 (pixel-wise).

The fast, streamed implementations are checked against slow literal transcriptions of Seo et
al.'s Algorithms 2 and 3 (one ``predict`` call per perturbed image) on a numpy model that scores
every image on its own, so the two must agree bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import pytest

from xaiserve.errors import InvalidInput
from xaiserve.imaging.exact_regions import boundary_prior, exact_superpixels, nested_scales
from xaiserve.methods.base import Explanation, Target, get_method
from xaiserve.methods.params import params_from_mapping
from xaiserve.methods.pixelwise_prediction_difference import (
    PixelwisePredictionDifferenceParams,
    patch_positions,
    patch_samples,
)
from xaiserve.methods.pixelwise_prediction_difference import cost as pixelwise_cost
from xaiserve.methods.pixelwise_prediction_difference import explain as pixelwise
from xaiserve.methods.prediction_difference import evidence, laplace_correction
from xaiserve.methods.regional_prediction_difference import (
    RegionalPredictionDifferenceParams,
    region_noise,
)
from xaiserve.methods.regional_prediction_difference import cost as regional_cost
from xaiserve.methods.regional_prediction_difference import explain as regional


class LinearModel:
    """``logits = W · x + b`` computed image by image (batch-independent results), recording
    every image it sees (as a digest) and the shape of every chunk."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self.weights = weights.astype(np.float64)  # (K, H, W, 3)
        self.bias = bias.astype(np.float64)
        self.seen: list[str] = []
        self.chunks: list[tuple[int, ...]] = []
        self.calls = 0
        self.streamed = False

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.weights.shape[1], self.weights.shape[2])

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        return "logits"

    def predict(
        self, images: np.ndarray | Iterable[np.ndarray], output: str = "probabilities"
    ) -> np.ndarray:
        self.calls += 1
        self.streamed = isinstance(images, Iterator)  # a lazy generator, not a materialised list
        chunks = [images] if isinstance(images, np.ndarray) else images
        rows = []
        for chunk in chunks:
            assert chunk.dtype == np.float32 and chunk.ndim == 4 and chunk.shape[-1] == 3
            self.chunks.append(chunk.shape)
            for image in chunk:
                self.seen.append(hashlib.sha1(image.tobytes()).hexdigest())
                logits = np.tensordot(self.weights, image.astype(np.float64), axes=3) + self.bias
                if output == "probabilities":
                    e = np.exp(logits - logits.max())
                    logits = e / e.sum()
                rows.append(logits)
        return np.asarray(rows, dtype=np.float32)


def region_model(mask: np.ndarray, gain: float, threshold: float, k: int = 3) -> LinearModel:
    """Class 0's logit is ``gain · (mean over mask of the channel-mean pixel − threshold)``;
    the other classes' logits are 0. Only pixels under ``mask`` matter."""
    h, w = mask.shape
    weights = np.zeros((k, h, w, 3))
    weights[0][mask] = gain / (3.0 * mask.sum())
    bias = np.zeros(k)
    bias[0] = -gain * threshold
    return LinearModel(weights, bias)


def random_model(h: int, w: int, k: int = 4, seed: int = 0) -> LinearModel:
    rng = np.random.default_rng(seed)
    return LinearModel(rng.normal(0, 0.02 / math.sqrt(h * w), (k, h, w, 3)), rng.normal(0, 1, k))


def scene(h: int = 40, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright square object on a darker noisy background, and the object's mask."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.float32)
    image[:] = (60.0, 90.0, 70.0)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 3 + h // 4, w // 2 : w // 2 + w // 4] = True
    image[mask] = (220.0, 200.0, 40.0)
    return np.clip(image, 0, 255), mask


# --- evidence functions --------------------------------------------------------------------


def test_difference_is_subtraction() -> None:
    assert evidence("difference", 0.8, 0.3, num_classes=2) == pytest.approx(0.5)
    assert evidence("difference", 0.2, 0.7, num_classes=2) == pytest.approx(-0.5)


def test_weight_of_evidence_by_hand() -> None:
    # N = 98, K = 2: p = 0.5 → (49 + 1)/100 = 0.5 (odds 1); p = 0.79 → (77.42 + 1)/100 = 0.7842.
    we = evidence("weight_of_evidence", 0.79, 0.5, num_classes=2, train_size=98)
    assert we == pytest.approx(math.log2(0.7842 / 0.2158))
    # p = 0.24 → (23.52 + 1)/100 = 0.2452: log2 odds(0.7842) − log2 odds(0.2452)
    we = evidence("weight_of_evidence", 0.79, 0.24, num_classes=2, train_size=98)
    assert we == pytest.approx(math.log2(0.7842 / 0.2158) - math.log2(0.2452 / 0.7548))


def test_information_difference_by_hand() -> None:
    # N = 6, K = 4: p = 1 → 7/10, p = 0 → 1/10: log2(0.7) − log2(0.1) = log2 7.
    got = evidence("information_difference", 1.0, 0.0, num_classes=4, train_size=6)
    assert got == pytest.approx(math.log2(7.0))


def test_laplace_correction_keeps_logs_finite_and_sign() -> None:
    assert laplace_correction(np.array([0.0, 1.0]), 5, 95).tolist() == [0.01, 0.96]
    for name in ("weight_of_evidence", "information_difference"):
        g = evidence(name, np.array([1.0, 0.0, 0.4]), np.array([0.0, 1.0, 0.4]), num_classes=10)
        assert np.all(np.isfinite(g)) and g[0] > 0 > g[1] and g[2] == 0.0  # type: ignore[arg-type]


def test_unknown_evidence_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="evidence"):
        evidence("ratio", 0.5, 0.5, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="evidence"):
        params_from_mapping(RegionalPredictionDifferenceParams, {"evidence": "ratio"})


# --- Algorithm 3 ---------------------------------------------------------------------------


def reference_algorithm_3(
    model: LinearModel, x: np.ndarray, c: int, params: RegionalPredictionDifferenceParams
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Seo et al., Algorithm 3, literally: one forward pass per excluded region."""
    p = model.predict(x[None])[0, c]  # line 1
    finest = exact_superpixels(x, params.prior_segments, params.segmentation)
    prior = boundary_prior(x, finest, params.bandwidth)  # line 2
    nested = nested_scales(x, finest, params.scales) if params.segmentation.nested else None
    sigma = math.sqrt(params.sigma_squared)
    s_j = []
    for j in range(1, params.scales + 1):  # line 3
        # line 4 (with segmentation.nested: the scale merged from the prior's regions)
        labels = (
            exact_superpixels(x, 2**j, params.segmentation) if nested is None else nested[j - 1]
        )
        s = np.zeros(x.shape[:2])
        for i in range(2**j):  # line 5
            region = labels == i
            x_without = x.copy()  # line 6
            x_without[region] = region_noise(params.seed, j, i, int(region.sum()), prior.mu, sigma)
            p_without = model.predict(x_without[None])[0, c]  # line 7
            g = evidence(
                params.evidence,
                p,
                p_without,
                num_classes=model.num_classes,
                train_size=params.laplace_train_size,
            )
            s[region] = max(0.0, float(g)) if params.clip_negative else float(g)  # lines 8-10
        s_j.append(s)
    return np.mean(s_j, axis=0), s_j  # line 13


@pytest.mark.parametrize(
    "mapping",
    [
        {},
        {"scales": 3, "evidence": "weight_of_evidence", "clip_negative": False, "seed": 7},
        {
            "scales": 4,
            "evidence": "information_difference",
            "sigma_squared": 400.0,
            "segmentation": {"algorithm": "felzenszwalb"},
            "prior_segments": 64,
        },
        {"scales": 4, "segmentation": {"nested": True}, "clip_negative": False},
        {
            "scales": 3,
            "segmentation": {"nested": True, "algorithm": "quickshift"},
            "prior_segments": 32,
        },
    ],
)
def test_regional_matches_literal_algorithm_3(mapping: dict[str, object]) -> None:
    image, _ = scene()
    params = params_from_mapping(
        RegionalPredictionDifferenceParams, {**mapping, "return_scale_maps": True}
    )
    fast_model, slow_model = random_model(40, 48), random_model(40, 48)
    got = regional(fast_model, image, Target(1), params)
    want, want_scales = reference_algorithm_3(slow_model, image, 1, params)
    assert fast_model.seen == slow_model.seen  # identical perturbed images, in the same order
    np.testing.assert_array_equal(got.heatmap, want.astype(np.float32))
    for j, s in enumerate(want_scales, start=1):
        np.testing.assert_array_equal(got.maps[f"scale_{2**j}"], s.astype(np.float32))
    assert got.heatmap.dtype == np.float32 and got.heatmap.shape == image.shape[:2]
    assert got.signed is (not params.clip_negative)


def test_regional_streams_cost_images_in_one_call_of_small_chunks() -> None:
    image, _ = scene()
    model = random_model(40, 48)
    params = RegionalPredictionDifferenceParams()
    explanation = regional(model, image, Target(0), params)
    assert regional_cost(params, (40, 48)) == 63 == len(model.seen)
    assert explanation.values["forward_passes"] == 63
    assert model.calls == 1 and model.streamed
    assert max(shape[0] for shape in model.chunks) <= 16
    assert explanation.target_probability == pytest.approx(
        float(random_model(40, 48).predict(image[None])[0, 0])
    )
    assert get_method("regional_prediction_difference").cost(params, (40, 48)) == 63
    assert regional_cost(RegionalPredictionDifferenceParams(scales=2), (8, 8)) == 7


def test_regional_known_answer_only_object_regions_light_up() -> None:
    image, mask = scene()
    model = region_model(mask, gain=0.05, threshold=120.0)
    params = RegionalPredictionDifferenceParams(return_scale_maps=True)
    explanation = regional(model, image, Target(0), params)
    scale_maps = []
    for n in (2, 4, 8, 16, 32):
        labels = explanation.maps[f"labels_{n}"].astype(int)
        assert sorted(np.unique(labels).tolist()) == list(range(n))
        s = explanation.maps[f"scale_{n}"]
        touches = np.isin(labels, np.unique(labels[mask]))
        assert np.all(s[~touches] == 0.0)  # exclusion leaves p unchanged: g = 0 exactly
        assert np.all(s[touches] > 0.0)  # the object is (partly) removed: p drops
        scale_maps.append(s)
    # line 13: s is the average over the scales
    np.testing.assert_allclose(explanation.heatmap, np.mean(scale_maps, axis=0), rtol=1e-6)
    assert np.all(explanation.heatmap[mask] > 0)
    assert explanation.heatmap[mask].mean() > 3 * explanation.heatmap[~mask].mean()
    # μ is the background colour, not the object's
    mu = np.array([explanation.values[f"mu_{c}"] for c in "rgb"])
    np.testing.assert_allclose(mu, (60.0, 90.0, 70.0), atol=6.0)


def test_regional_max_zero_clips_evidence_against() -> None:
    image, mask = scene()
    # Class 0 is *against* the object: removing it raises p(0|x), so g < 0 there.
    model = region_model(mask, gain=-0.05, threshold=120.0)
    clipped = regional(model, image, Target(0), RegionalPredictionDifferenceParams())
    signed = regional(
        model, image, Target(0), RegionalPredictionDifferenceParams(clip_negative=False)
    )
    assert not clipped.signed and signed.signed
    assert np.all(clipped.heatmap == 0.0)
    assert np.all(signed.heatmap[mask] < 0.0)
    np.testing.assert_array_equal(clipped.heatmap, np.maximum(signed.heatmap, 0.0))


def test_regional_seed_determinism_and_contrast() -> None:
    image, _ = scene()
    params = RegionalPredictionDifferenceParams(
        scales=3, clip_negative=False, seed=3, sigma_squared=900.0
    )
    model = random_model(40, 48)
    a = regional(model, image, Target(0, contrast=2), params)
    b = regional(model, image, Target(0, contrast=2), params)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    other = regional(
        model,
        image,
        Target(0),
        RegionalPredictionDifferenceParams(
            scales=3, clip_negative=False, seed=4, sigma_squared=900.0
        ),
    )
    assert not np.array_equal(a.heatmap, other.heatmap)
    # the contrast map uses the same forward passes and equals the map of that class
    np.testing.assert_array_equal(
        a.maps["contrast"], regional(model, image, Target(2), params).heatmap
    )


def test_regional_params_defaults_and_validation() -> None:
    params = params_from_mapping(RegionalPredictionDifferenceParams, {})
    assert (params.scales, params.sigma_squared, params.prior_segments) == (5, 10.0, 256)
    assert params.clip_negative and params.evidence == "difference" and params.seed == 0
    nested = params_from_mapping(
        RegionalPredictionDifferenceParams, {"segmentation": {"algorithm": "quickshift"}}
    )
    assert nested.segmentation.algorithm == "quickshift"
    for bad in ({"scales": 0}, {"sigma_squared": -1.0}, {"bandwidth": 0.0}):
        with pytest.raises(InvalidInput):
            params_from_mapping(RegionalPredictionDifferenceParams, bad)
    with pytest.raises(InvalidInput):
        regional(
            random_model(4, 4),
            np.zeros((4, 4, 3), np.float32),
            Target(0),
            RegionalPredictionDifferenceParams(scales=5),
        )
    with pytest.raises(InvalidInput):
        regional(random_model(40, 48), scene()[0], Target(9), RegionalPredictionDifferenceParams())


# --- Algorithm 2 ---------------------------------------------------------------------------


def reference_algorithm_2(
    model: LinearModel, x: np.ndarray, c: int, params: PixelwisePredictionDifferenceParams
) -> np.ndarray:
    """Seo et al., Algorithm 2 (Zintgraf et al.), literally: one forward pass per sample."""
    h, w = x.shape[:2]
    k, r = params.inner_size, params.samples
    s = np.zeros((h, w))
    count = np.zeros((h, w))  # line 1
    p = model.predict(x[None])[0, c]  # line 2
    for y in patch_positions(h, k, params.stride):  # line 3
        for xx in patch_positions(w, k, params.stride):
            total = 0.0  # line 4
            samples = patch_samples(x, y, xx, params)
            for j in range(r):  # line 6
                x_prime = x.copy()
                x_prime[y : y + k, xx : xx + k] = samples[j]  # line 7
                total += float(model.predict(x_prime[None])[0, c])  # lines 8-9
            g = float(
                evidence(
                    params.evidence,
                    p,
                    total / r,
                    num_classes=model.num_classes,
                    train_size=params.laplace_train_size,
                )
            )  # line 11
            if params.clip_negative:
                g = max(0.0, g)
            s[y : y + k, xx : xx + k] += g  # lines 12-14
            count[y : y + k, xx : xx + k] += 1
    return np.where(count > 0, s / np.maximum(count, 1), 0.0)  # line 16


def test_ring_sampler_uses_ring_mean_and_variance() -> None:
    # Inner 2×2 patch at (2, 2) of an 8×8 image; outer 4×4 at rows/cols 1..4: the ring is 12
    # pixels, 6 of value 10 and 6 of value 30 → mean 20, std 10 in every channel.
    x = np.zeros((8, 8, 3), np.float32)
    x[1:5, 1:5] = 10.0
    x[1:5, 3:5] = 30.0
    x[2:4, 2:4] = 200.0  # the inner patch itself must not count
    params = PixelwisePredictionDifferenceParams(inner_size=2, outer_size=4, samples=4000)
    samples = patch_samples(x, 2, 2, params)
    assert samples.shape == (4000, 2, 2, 3)
    assert samples.mean() == pytest.approx(20.0, abs=0.3)
    assert samples.std() == pytest.approx(10.0, abs=0.3)


@pytest.mark.parametrize(
    "mapping",
    [
        {"inner_size": 4, "outer_size": 8, "samples": 3, "stride": 3},
        {
            "inner_size": 5,
            "outer_size": 8,
            "samples": 2,
            "stride": 7,
            "evidence": "difference",
            "clip_negative": True,
            "seed": 11,
        },
    ],
)
def test_pixelwise_matches_literal_algorithm_2(mapping: dict[str, object]) -> None:
    image, _ = scene(20, 24)
    params = params_from_mapping(PixelwisePredictionDifferenceParams, mapping)
    fast_model, slow_model = random_model(20, 24), random_model(20, 24)
    got = pixelwise(fast_model, image, Target(2), params)
    want = reference_algorithm_2(slow_model, image, 2, params)
    assert fast_model.seen == slow_model.seen
    np.testing.assert_array_equal(got.heatmap, want.astype(np.float32))
    assert len(fast_model.seen) == pixelwise_cost(params, (20, 24)) == got.values["forward_passes"]
    assert max(shape[0] for shape in fast_model.chunks) <= 32 and fast_model.streamed


def test_pixelwise_covers_every_pixel_and_counts_cost() -> None:
    assert patch_positions(20, 4, 3) == [0, 3, 6, 9, 12, 15, 16]
    assert patch_positions(10, 10, 1) == [0]
    params = PixelwisePredictionDifferenceParams()  # k = 10, stride 1: (n − k + 1)² patches
    assert pixelwise_cost(params, (256, 256)) == 1 + 247 * 247 * 10
    assert (
        pixelwise_cost(PixelwisePredictionDifferenceParams(stride=8), (224, 224))
        == 1 + 28 * 28 * 10
    )
    assert get_method("pixelwise_prediction_difference").cost(params, (20, 20)) == 1 + 121 * 10


def test_pixelwise_known_answer_zero_far_from_object_positive_on_it() -> None:
    image, mask = scene(24, 24)
    model = region_model(mask, gain=0.05, threshold=120.0)
    params = PixelwisePredictionDifferenceParams(inner_size=4, outer_size=8, samples=4)
    explanation = pixelwise(model, image, Target(0, contrast=1), params)
    assert explanation.signed
    # a pixel farther than k − 1 (Chebyshev) from the object is only in patches that miss it
    near = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    near[max(0, ys.min() - 3) : ys.max() + 4, max(0, xs.min() - 3) : xs.max() + 4] = True
    assert np.all(explanation.heatmap[~near] == 0.0)
    assert np.all(explanation.heatmap[mask] > 0.0)
    assert np.all(explanation.maps["contrast"][mask] < 0.0)  # class 1 gains when 0 loses
    assert explanation.target_probability is not None and explanation.target_probability > 0.5


def test_pixelwise_params_validation() -> None:
    params = params_from_mapping(PixelwisePredictionDifferenceParams, {})
    assert (params.inner_size, params.outer_size, params.samples, params.stride) == (10, 14, 10, 1)
    assert params.evidence == "weight_of_evidence" and not params.clip_negative
    for bad in ({"outer_size": 10}, {"samples": 0}, {"stride": 0}, {"inner_size": 0}):
        with pytest.raises(InvalidInput):
            params_from_mapping(PixelwisePredictionDifferenceParams, bad)
    with pytest.raises(InvalidInput):
        pixelwise(
            random_model(8, 8),
            np.zeros((8, 8, 3), np.float32),
            Target(0),
            PixelwisePredictionDifferenceParams(),
        )


def test_registered_methods() -> None:
    regional_spec = get_method("regional_prediction_difference")
    assert regional_spec.backend == "blackbox" and regional_spec.signed is False
    assert regional_spec.params_type is RegionalPredictionDifferenceParams
    pixel_spec = get_method("pixelwise_prediction_difference")
    assert pixel_spec.backend == "blackbox" and pixel_spec.signed is True
    assert isinstance(
        regional_spec.explain(
            random_model(40, 48),
            scene()[0],
            Target(0),
            RegionalPredictionDifferenceParams(scales=1),
        ),
        Explanation,
    )
