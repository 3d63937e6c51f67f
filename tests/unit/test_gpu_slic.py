"""The GPU SLIC (torch) against scikit-image's SLIC, run on torch's CPU tensors here.

Without a GPU the same tensor code runs on the CPU, in float64 (scikit-image's precision) and in
float32 (what CUDA uses); it must reproduce ``skimage.segmentation.slic`` (the independent
implementation) label for label on images SLIC has to work on. ``bench/segmentation_device.py``
(called by ``bench/gpu.py``) repeats the comparison on CUDA where a GPU exists.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from xaiserve.imaging import gpu_slic
from xaiserve.imaging.segmentation import SegmentationParams, superpixels

from .test_exact_regions import IMAGES


@pytest.mark.parametrize("name", ["blobs", "blobs2", "halves"])
@pytest.mark.parametrize(
    "params",
    [
        SegmentationParams(n_segments=8),
        SegmentationParams(n_segments=40),
        SegmentationParams(n_segments=40, slic_zero=False, compactness=20.0, sigma=0.0),
    ],
)
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_torch_slic_reproduces_scikit_image(
    name: str, params: SegmentationParams, precision: str
) -> None:
    image = IMAGES[name]
    want = superpixels(image, params)
    got = gpu_slic.superpixels(image, params, "cpu", precision)
    assert got.dtype == np.int32 and got.shape == want.shape
    assert adjusted_rand_score(want.ravel(), got.ravel()) > 0.99
    assert (got == want).mean() > 0.99  # same label numbering, too


def test_only_slic_runs_on_the_gpu() -> None:
    with pytest.raises(ValueError, match="SLIC"):
        gpu_slic.superpixels(IMAGES["flat"], SegmentationParams(algorithm="felzenszwalb"), "cpu")
    with pytest.raises(ValueError, match="precision"):
        gpu_slic.superpixels(IMAGES["flat"], SegmentationParams(), "cpu", "float16")


def test_unavailable_reason_names_what_is_missing() -> None:
    reason = gpu_slic.unavailable_reason()
    torch = pytest.importorskip("torch")
    assert (reason is None) == torch.cuda.is_available()
