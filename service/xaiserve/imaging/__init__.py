"""Image handling: decoding, resizing, superpixels and perturbation fills."""
