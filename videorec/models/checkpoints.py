"""Loading checkpoints of every supported format into our models.

The pipeline of :func:`load_pretrained`:

1. :func:`read_state_dict` loads the file with ``weights_only=True`` and unwraps the container: our Lightning
   checkpoints (``state_dict`` with a ``backbone.`` prefix), PySlowFast / pytorchvideo ``.pyth`` files
   (``model_state``), official UniFormer files (``model``), DDP ``module.`` prefixes, or a bare state dict.
2. The family's converter, the model class's ``checkpoint_filter`` attribute (a :data:`CheckpointFilter`; subclasses
   inherit it), renames foreign keys and resizes position tables and returns ``(state_dict, format_name)``, or
   ``(state_dict, format_name, FilterNotes)`` to report the tensors it resized or dropped. A family whose checkpoints
   carry its own names uses :func:`own_keys_filter`; a model without the attribute loads as is.
3. The architecture settings the format implies (the family's ``format_settings[format_name]``; for our own Lightning
   checkpoints, the family's settings stored in the checkpoint's ``hyper_parameters.backbone_kwargs``) are applied
   to the model with ``apply_format_setting``, except those the caller set explicitly.
4. :func:`adapt_state_dict` inflates 2D kernels (or 3D kernels with one temporal tap) to 3D (``"mean"`` or
   ``"center"``), drops a classifier of another size with a warning, and raises an error naming every key that still
   does not fit.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "CheckpointFilter",
    "FilterNotes",
    "FormatNote",
    "implied_settings",
    "own_keys_filter",
    "is_image_checkpoint",
    "LoadReport",
    "read_state_dict",
    "read_checkpoint",
    "adapt_state_dict",
    "inflate_weight",
    "load_pretrained",
    "strip_prefix",
    "strip_compiled",
    "format_setting_names",
]

log = logging.getLogger(__name__)

INFLATE_MODES = ("mean", "center")

CheckpointFilter = Callable[[dict[str, torch.Tensor], nn.Module], tuple]
"""A family's converter: ``(state_dict, model) -> (state_dict, format_name)`` or ``(state_dict, format_name,
FilterNotes)``, the state dict in the family's key names (renamed, position tables resized to the model) and the name
of the format it was found in. Set on the model class as ``checkpoint_filter = staticmethod(fn)``."""


@dataclass
class FilterNotes:
    """What a family's converter changed beyond renaming, for the load report."""

    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # key: (old, new)
    dropped: dict[str, str] = field(default_factory=dict)  # key: why the model has no use for it

    def resize(self, key: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Record that ``key`` was resampled from ``old``'s shape to ``new``'s (when they differ) and return ``new``."""
        if tuple(old.shape) != tuple(new.shape):
            self.resized[key] = (tuple(old.shape), tuple(new.shape))
        return new


@dataclass(frozen=True)
class FormatNote:
    """One architecture setting of a checkpoint format, read from the code that writes the format.

    A family lists its notes in ``FORMAT_NOTES``; ``implies`` is the format setting the note makes the loader apply
    (``{name: value}``, the family's ``format_settings[format]``), empty when the source's value is our default.
    """

    format: str
    setting: str
    value: str
    source: str
    implies: tuple[tuple[str, object], ...] = ()

    def row(self) -> str:
        applied = ", ".join(f"`{k}={v}`" for k, v in self.implies) or "ours"
        return f"| `{self.format}` | {self.setting} | {self.value} | {applied} | {self.source} |"


def implied_settings(notes: list[FormatNote]) -> dict[str, dict[str, object]]:
    """``{format: {setting: value}}`` from a family's notes: what its ``format_settings`` must hold."""
    out: dict[str, dict[str, object]] = {}
    for note in notes:
        for name, value in note.implies:
            out.setdefault(note.format, {})[name] = value
    return out


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and keys."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, for logs and ``scripts/convert_checkpoint.py``."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    renamed: int = 0
    settings: dict[str, object] = field(default_factory=dict)  # architecture settings the format implied, applied
    resized: list[str] = field(default_factory=list)  # position tables resampled to the model's input size
    resized_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # tensors of the source the model has no use for: why

    def summary(self) -> str:
        applied = ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "none"
        return (
            f"{self.path}: format={self.format}, loaded {len(self.loaded)} tensors, inflated {len(self.inflated)}, "
            f"resized {len(self.resized)}, renamed {self.renamed}, dropped {sorted(self.dropped) or 'none'}, "
            f"dropped head {self.dropped_head or 'none'}, format settings {applied}"
        )


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (and only from those)."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Load a checkpoint file safely and return its model state dict and the container format."""
    state_dict, container, _ = read_checkpoint(path)
    return state_dict, container


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Load a checkpoint file safely: its model state dict, the container format and, for our Lightning checkpoints,
    the ``hyper_parameters`` (an empty dict otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with arbitrary objects, corrupt zip, ...
        raise CheckpointError(f"{path}: cannot be loaded with weights_only=True ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(ckpt).__name__}")

    fmt, hparams = "state_dict", {}
    if "pytorch-lightning_version" in ckpt or ("state_dict" in ckpt and "hyper_parameters" in ckpt):
        sd, fmt = ckpt["state_dict"], "lightning"
        hparams = ckpt.get("hyper_parameters") or {}
        if any(k.startswith("backbone.") for k in sd):
            sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    else:
        sd = ckpt
        for key in ("model_state", "model", "state_dict", "module"):
            if key in sd and isinstance(sd[key], dict):
                sd, fmt = sd[key], key
                break
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(ckpt)[:20]})")
    if all(k.startswith("module.") for k in sd):
        sd = strip_prefix(sd, "module.")
    return strip_compiled(sd), fmt, dict(hparams)


def strip_compiled(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key names without the ``_orig_mod.`` that a module wrapped by ``torch.compile`` adds (older runs saved those)."""
    return {k.replace("_orig_mod.", ""): v for k, v in sd.items()}


def inflate_weight(weight: torch.Tensor, time: int, mode: str = "mean") -> torch.Tensor:
    """Inflate a 2D conv kernel (O, I, kh, kw) to 3D (O, I, time, kh, kw).

    ``"mean"`` repeats it along time and divides by ``time`` (the official UniFormer / I3D inflation: a static video
    gives the image response); ``"center"`` places it at the centre frame with zeros elsewhere (also the image
    response on a static video, and exactly the 2D model on one frame).
    """
    if mode not in INFLATE_MODES:
        raise ValueError(f"inflate mode must be one of {INFLATE_MODES}, got {mode!r}")
    if mode == "mean":
        return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / time
    out = weight.new_zeros(weight.shape[:2] + (time,) + weight.shape[2:])
    out[:, :, time // 2] = weight
    return out


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "classifier_keys", ("head.",))
    return tuple(names)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: nn.Module,
    inflate: str = "mean",
    report: LoadReport | None = None,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Make ``state_dict`` fit ``model`` exactly: inflate kernels, drop a mismatched head, or raise naming keys."""
    report = report or LoadReport(path=source, format="state_dict")
    target = model.state_dict()
    heads = _classifier_prefixes(model)
    out: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state_dict.items():
        if key not in target:
            continue
        want = target[key]
        if value.ndim == 5 and want.ndim == 5 and value.shape[2] == 1 < want.shape[2]:
            value = value.squeeze(2)  # a kernel with one temporal tap (an image model built as video) is 2D
        if value.shape == want.shape:
            out[key] = value
        elif (
            value.ndim == 4 and want.ndim == 5 and value.shape[:2] + value.shape[2:] == want.shape[:2] + want.shape[3:]
        ):
            out[key] = inflate_weight(value, want.shape[2], inflate)
            report.inflated.append(key)
        elif key.startswith(heads):
            report.dropped_head.append(key)
        else:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(want.shape)}")
    # a head whose weight was dropped must be dropped whole (bias too), so the new head starts fresh
    if report.dropped_head:
        for key in list(out):
            if key.startswith(heads):
                out.pop(key)
                report.dropped_head.append(key)
        report.dropped_head = sorted(set(report.dropped_head))
        warnings.warn(
            f"{source}: classifier {report.dropped_head} has another size than the model's; it was dropped and "
            "the new head is randomly initialised",
            stacklevel=3,
        )
    unexpected = sorted(k for k in state_dict if k not in target)
    missing = sorted(k for k in target if k not in out and k not in report.dropped_head and not _optional(k))
    problems = []
    if mismatched:
        problems.append("shape mismatch:\n  " + "\n  ".join(mismatched))
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {_abbrev(missing)}")
    if unexpected:
        problems.append(f"not used by the model ({len(unexpected)}): {_abbrev(unexpected)}")
    if problems:
        name = getattr(model, "registry_name", type(model).__name__)
        raise CheckpointError(f"{source} does not fit {name}:\n" + "\n".join(problems))
    report.loaded = sorted(out)
    return out


def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _abbrev(keys: list[str], n: int = 12) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def is_image_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict holds an image model's weights: it has conv kernels and none with more than one temporal
    tap (2D kernels, or 3D ones built with ``num_frames=1``)."""
    kernels = [v for v in state_dict.values() if v.ndim in (4, 5)]
    return bool(kernels) and all(v.ndim == 4 or v.shape[2] == 1 for v in kernels)


def own_keys_filter(name: str) -> CheckpointFilter:
    """The filter of a family whose checkpoints carry its own key names: nothing is renamed, and the format is
    ``name``, or ``name-image`` for an image model's weights (whose kernels the loader then inflates)."""

    def checkpoint_filter(state_dict: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
        return state_dict, f"{name}-image" if is_image_checkpoint(state_dict) else name

    checkpoint_filter.__qualname__ = checkpoint_filter.__name__ = f"{name}_checkpoint_filter"
    return checkpoint_filter


def load_pretrained(
    model: nn.Module, path: str | Path, inflate: str | None = None, explicit: set[str] | frozenset[str] = frozenset()
) -> LoadReport:
    """Load a checkpoint of any supported format into ``model`` (in place) and return a :class:`LoadReport`.

    A format can imply architecture settings that change outputs without changing key names or shapes (pytorchvideo's
    MViT uses LayerNorm eps 1e-5 after pooling). The family lists them in its ``format_settings`` class attribute,
    ``{format: {setting: value}}``, and applies them with ``apply_format_setting(name, value)``; our own Lightning
    checkpoints carry them in ``hyper_parameters.backbone_kwargs``. The settings named in ``explicit`` (the caller's
    own overrides) are left as the caller set them. The applied settings are also kept on the model as
    ``model.applied_format_settings``, so that a training module can store them with its hyperparameters.
    """
    state_dict, fmt, hparams = read_checkpoint(path)
    report = LoadReport(path=str(path), format=fmt)
    filter_fn: CheckpointFilter | None = getattr(type(model), "checkpoint_filter", None)
    family_fmt = None
    if filter_fn is not None:
        before = set(state_dict)
        result = filter_fn(state_dict, model)
        if not (
            isinstance(result, tuple)
            and len(result) in (2, 3)
            and isinstance(result[1], str)
            and (len(result) == 2 or isinstance(result[2], FilterNotes))
        ):
            raise TypeError(
                f"{type(model).__name__}.checkpoint_filter must return (state_dict, format_name) or "
                f"(state_dict, format_name, FilterNotes), got {type(result).__name__}"
            )
        state_dict, family_fmt = result[0], result[1]
        notes = result[2] if len(result) == 3 else FilterNotes()
        report.format = f"{family_fmt} ({fmt})" if fmt != "state_dict" else family_fmt
        report.renamed = len(set(state_dict) - before)
        report.resized = sorted(notes.resized)
        report.resized_shapes = dict(notes.resized)
        report.dropped = dict(notes.dropped)
    settings = dict(getattr(type(model), "format_settings", {}).get(family_fmt, {})) if family_fmt else {}
    settings.update(_stored_settings(model, hparams))
    for name, value in settings.items():
        if name not in explicit:
            model.apply_format_setting(name, value)
            report.settings[name] = value
    if report.settings:
        model.applied_format_settings = dict(report.settings)
        log.warning(
            "%s: the %s format implies %s; applied to the model (pass them explicitly to override)",
            path, family_fmt or fmt, ", ".join(f"{k}={v}" for k, v in report.settings.items()),
        )  # fmt: skip
    if report.dropped:
        log.info("%s: dropped %s", path, ", ".join(f"{k} ({why})" for k, why in sorted(report.dropped.items())))
    mode = inflate or getattr(model, "default_inflate", "mean")
    state_dict = adapt_state_dict(state_dict, model, inflate=mode, report=report, source=str(path))
    model.load_state_dict(state_dict, strict=False)
    log.info(report.summary())
    return report


def format_setting_names(model_or_cls: nn.Module | type) -> set[str]:
    """The settings a family's ``apply_format_setting`` accepts: every name its ``format_settings`` use, plus the
    extra ones it lists in ``extra_format_settings``."""
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    names = set(getattr(cls, "extra_format_settings", ()))
    for settings in getattr(cls, "format_settings", {}).values():
        names |= set(settings)
    return names


def _stored_settings(model: nn.Module, hparams: dict) -> dict[str, object]:
    """The family's format settings stored in a Lightning checkpoint's ``backbone_kwargs`` (our own format)."""
    stored = hparams.get("backbone_kwargs") or {}
    if not isinstance(stored, dict):
        return {}
    names = format_setting_names(model)
    return {k: v for k, v in stored.items() if k in names}
