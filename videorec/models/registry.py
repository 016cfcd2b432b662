"""Model registry: ``register_model``, ``create_model`` and ``list_models``.

Each family module decorates one builder function per variant with ``@register_model``. A builder takes
``**kwargs`` (the caller's overrides, which win over the variant's defaults) and returns an ``nn.Module`` that
maps ``(B, C, T, H, W)`` video to ``(B, num_classes)`` logits.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

__all__ = [
    "register_model",
    "unregister_model",
    "create_model",
    "list_models",
    "is_model",
    "model_family",
    "build_variant",
    "UnknownModelError",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


class UnknownModelError(KeyError):
    """Raised by :func:`create_model` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a variant builder under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice ({_MODELS[name].__module__} and {fn.__module__})")
    _MODELS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def unregister_model(name: str) -> Callable[..., nn.Module]:
    """Remove a registered variant (a plugin's or a test's) and return its builder."""
    _check_name(name)
    _FAMILY.pop(name)
    return _MODELS.pop(name)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registry names matching a shell-style ``pattern`` (e.g. ``"*_tiny"``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def model_family(name: str) -> str:
    """The family (module) a registered variant belongs to, e.g. ``"uniformer"``."""
    _check_name(name)
    return _FAMILY[name]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = [n for n in _MODELS if n.split("_")[0] == name.split("_")[0]]
        hint = f" Did you mean one of {close}?" if close else ""
        raise UnknownModelError(f"Unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
    inflate: str | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name, see :func:`list_models`.
        num_classes: size of the classification head (the variant's default when None).
        pretrained: path to a checkpoint in any supported format (ours, official UniFormer 2D/3D, torchvision or
            pytorchvideo MViT, PySlowFast, timm Twins). The format is detected and keys are converted; 2D kernels
            are inflated to 3D; a head of another size is dropped with a warning.
        inflate: how 2D kernels become 3D when loading an image checkpoint: ``"mean"`` (repeat over time and
            divide by the temporal size) or ``"center"`` (the kernel at the centre frame, zeros elsewhere).
            None uses the family's default.
        **overrides: architecture overrides such as ``num_frames``, ``img_size``, ``drop_path_rate``.
    """
    _check_name(name)
    fn = _MODELS[name]
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    model = fn(**overrides)
    model.registry_name = name
    if pretrained:
        from .checkpoints import load_pretrained

        load_pretrained(model, pretrained, inflate=inflate, explicit=set(overrides))
    return model


def build_variant(
    cls: type[nn.Module], variant: str, defaults: dict, overrides: dict, cfg: Any | None = None
) -> nn.Module:
    """Instantiate ``cls`` with a variant's architecture ``defaults`` updated by the caller's ``overrides``.

    A family whose architecture is a config dataclass (MViT) passes the variant's ``cfg``: overrides that name one of
    its fields replace them (``dataclasses.replace``) and the model is built as ``cls(cfg, **rest)``. An override that
    is neither an argument of ``cls`` nor a field of ``cfg`` is an error that names it and lists the accepted keys.
    """
    params = inspect.signature(cls.__init__).parameters
    fields = {f.name for f in dataclasses.fields(cfg)} if cfg is not None else set()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        own = {"self", "cfg"} if cfg is not None else {"self"}  # filled in here, not by the caller
        accepted = (set(params) - own) | fields
        unknown = sorted(k for k in overrides if k not in accepted)
        if unknown:
            raise TypeError(f"{variant}: unknown override(s) {unknown}; accepted: {sorted(accepted)}")
    kwargs = {**defaults, **overrides}
    if cfg is None:
        model = cls(**kwargs)
        model.variant_args = {"architecture": variant, **defaults}
        return model
    changes = {k: kwargs.pop(k) for k in fields & kwargs.keys()}
    model = cls(dataclasses.replace(cfg, **changes), **kwargs)
    model.variant_args = {"architecture": variant, **dataclasses.asdict(cfg), **defaults}
    return model
