"""Image-space value types shared by every layer.

Image space: every image is ``float32`` of shape ``(H, W, 3)``, RGB, values on the 0..255 scale;
heatmaps are ``(H, W)`` ``float32`` on the same grid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ImageBatch = np.ndarray
"""``(N, H, W, 3)`` float32 RGB images on the 0..255 scale."""

NetworkBatch = np.ndarray
"""``(N, 3, H, W)`` or ``(N, H, W, 3)`` float32: image-space images after the model's
preprocessing (value range, channel order, normalisation, layout), as the network takes them."""

OutputSpace = Literal["probabilities", "raw"]
"""What ``predict`` returns: probabilities (softmax applied to logit models) or raw outputs."""
