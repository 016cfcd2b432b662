"""Convert a checkpoint of any supported format into videorec's own format.

The source format is detected by ``videorec.models.load_pretrained`` (our Lightning checkpoints, official UniFormer
2D/3D, torchvision / pytorchvideo / PySlowFast MViT, timm Twins, ...): keys are renamed, position tables resized to
the chosen input size, 2D kernels inflated, a classifier of another size dropped. The result is written as

* a plain state dict with our key names (default), loadable with ``model.load_state_dict`` or ``pretrained=``; or
* with ``--lightning``, a checkpoint that ``videorec.lit.VideoClassifier.load_from_checkpoint`` restores (the
  backbone name and overrides are stored as its hyperparameters).

It prints a summary: the detected format, the architecture settings the format implies and that were applied (see
each family's ``FORMAT_NOTES``), and the tensors loaded, renamed, resized (position tables resampled to the model's
input size), inflated (2D -> 3D kernels) and dropped (a classifier of another size, tensors the model has no use for).
A Lightning checkpoint stores the applied settings with the backbone's arguments, so it restores them; a plain state
dict holds tensors only, so the summary prints the ``create_model`` arguments that rebuild the same model.

Examples::

    python scripts/convert_checkpoint.py mvit_b mvit_v1_b-dbeb1030.pth mvit_b_k400.pth
    python scripts/convert_checkpoint.py mvitv2_s MViTv2_S_16x4_k400.pyth out.ckpt --lightning --num-frames 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from videorec.models import create_model, load_pretrained  # noqa: E402
from videorec.models.checkpoints import LoadReport  # noqa: E402


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def summary_lines(src: Path, model_name: str, overrides: dict, report: LoadReport, total: int) -> list[str]:
    """The conversion summary, one ``label: value`` line each."""
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    resized = ", ".join(f"{k} {_shape(a)} -> {_shape(b)}" for k, (a, b) in sorted(report.resized_shapes.items()))
    dropped = ", ".join(f"{k} ({why})" for k, why in sorted(report.dropped.items()))
    return [
        f"source:   {src}",
        f"format:   {report.format}",
        f"settings: {settings + ' (implied by the format, applied)' if settings else 'none implied'}",
        f"model:    {model_name} {overrides or ''}".rstrip(),
        f"loaded:   {len(report.loaded)} of {total} tensors ({report.renamed} under new names)",
        f"resized:  {resized or 'none'}",
        f"inflated: {', '.join(report.inflated) or 'none'}",
        f"dropped:  {dropped or 'none'}",
        f"head:     {'dropped ' + ', '.join(report.dropped_head) if report.dropped_head else 'kept'}",
    ]


def _lightning_checkpoint(model_name: str, num_classes: int, overrides: dict, state_dict: dict) -> dict:
    import lightning

    from videorec.lit import VideoClassifier

    lit = VideoClassifier(model_name=model_name, num_classes=num_classes, backbone_kwargs=overrides)
    lit.backbone.load_state_dict(state_dict)
    return {
        "state_dict": lit.state_dict(),
        "hyper_parameters": dict(lit.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }


def main(argv: list[str] | None = None) -> LoadReport:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="registry name of the target model, e.g. mvit_b")
    parser.add_argument("src", type=Path, help="checkpoint in any supported format")
    parser.add_argument("dst", type=Path, help="output file")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the variant's)")
    parser.add_argument("--num-frames", type=int, default=None, help="clip length the model is built for")
    parser.add_argument("--img-size", type=int, default=None, help="resolution the model is built for")
    parser.add_argument("--inflate", choices=["mean", "center"], default=None, help="2D -> 3D kernel inflation")
    parser.add_argument("--lightning", action="store_true", help="write a VideoClassifier checkpoint")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in (("num_frames", args.num_frames), ("img_size", args.img_size)) if v is not None}
    model = create_model(args.model, num_classes=args.num_classes, **overrides)
    report = load_pretrained(model, args.src, inflate=args.inflate)
    state_dict = model.state_dict()
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    if args.lightning:
        num_classes = model.num_classes
        backbone_kwargs = {**report.settings, **overrides}  # the settings travel with the checkpoint
        torch.save(_lightning_checkpoint(args.model, num_classes, backbone_kwargs, state_dict), args.dst)
    else:
        torch.save(state_dict, args.dst)

    for line in summary_lines(args.src, args.model, overrides, report, len(state_dict)):
        print(line)
    print(f"written:  {args.dst} ({'Lightning VideoClassifier checkpoint' if args.lightning else 'state dict'})")
    if report.settings and not args.lightning:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in {**overrides, **report.settings}.items())
        print(
            f"note:     a state dict holds no settings; rebuild with create_model({args.model!r}, {kwargs}, "
            "pretrained=...) or convert with --lightning, which stores them"
        )
    return report


if __name__ == "__main__":
    main()
