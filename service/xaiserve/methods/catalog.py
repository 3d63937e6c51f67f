"""Every method this server provides; importing this module registers them all."""

from xaiserve.methods import (  # noqa: F401 - imported for their @register_method side effect
    contextual_importance,
    gad,
    gradients,
    lrp,
    pixelwise_prediction_difference,
    regional_prediction_difference,
)
