"""The videorec model zoo: one ``create_model`` API over every spatiotemporal transformer family."""

# The family modules, listed explicitly (a new family is added here); importing one runs its @register_model
# decorators.
from . import mvit, twins, uniformer, vvt, xformer  # noqa: F401
from .checkpoints import CheckpointError, load_pretrained
from .registry import (
    UnknownModelError,
    create_model,
    is_model,
    list_models,
    model_family,
    register_model,
    unregister_model,
)

__all__ = [
    "CheckpointError",
    "UnknownModelError",
    "create_model",
    "is_model",
    "list_models",
    "load_pretrained",
    "model_family",
    "register_model",
    "unregister_model",
]
