"""The model repository on disk (``repository``), per-model config (``config``), the ``Model``
facade methods talk to (``model``) and GAD support sets (``support_sets``, ``support_models``)."""

from xaiserve.contracts.names import validate_name
from xaiserve.models.config import ModelConfig, load_config
from xaiserve.models.model import Model
from xaiserve.models.repository import ModelRepository

__all__ = ["Model", "ModelConfig", "ModelRepository", "load_config", "validate_name"]
