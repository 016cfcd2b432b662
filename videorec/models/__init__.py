"""The videorec model zoo: one ``create_model`` API over every spatiotemporal transformer family."""

import importlib
import pkgutil

from .checkpoints import CheckpointError, load_pretrained
from .registry import UnknownModelError, create_model, is_model, list_models, model_family, register_model

_NOT_FAMILIES = {"registry", "layers", "checkpoints"}

# Importing a family module runs its @register_model decorators.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_FAMILIES and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "CheckpointError",
    "UnknownModelError",
    "create_model",
    "is_model",
    "list_models",
    "load_pretrained",
    "model_family",
    "register_model",
]
