"""Export a trained model: ``python -m videorec.export ckpt_path=<checkpoint> format=onnx|torchscript|exported``.

The file runs without videorec: ONNX with onnxruntime, TorchScript with ``torch.jit.load``, an exported program with
``torch.export.load``. Beside it, ``<name>.json`` says how to feed it and read it: the class names in label order, the
input shape (B, 3, T, H, W), the normalisation (mean / std on [0, 1] RGB pixels), the frame sampling and the
evaluation views the model was trained with. The export is checked before it is written: its logits on a random clip
must match the checkpoint's model.

Examples:
    python -m videorec.export ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt format=onnx
    python -m videorec.export ckpt_path=best.ckpt format=exported output=deploy/mvit_b.pt2
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from .data.transforms import MEAN, STD
from .utils.run import load_for_inference, main_on_stored_data, print_summary, write_json

__all__ = ["FORMATS", "export", "main"]

log = logging.getLogger("videorec")

FORMATS = {"onnx": ".onnx", "torchscript": ".ts", "exported": ".pt2"}


class _Logits(torch.nn.Module):
    """The backbone alone, in eval mode: (B, 3, T, H, W) float -> (B, num_classes) logits."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.backbone(video)


def _run_exported(fmt: str, path: Path, clip: torch.Tensor) -> torch.Tensor:
    """Load the written file the way a deployment would, and run it on ``clip``."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"video": clip.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(clip)
    return torch.export.load(str(path)).module()(clip)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.ckpt_path``'s model in ``cfg.format`` with its ``.json`` beside it; returns that description."""
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt}: use one of {', '.join(FORMATS)}")
    ckpt, model, data_cfg = load_for_inference(cfg)
    model.eval()
    frames, height, width = model._input_size()
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / f"{ckpt.stem}{FORMATS[fmt]}"
    output.parent.mkdir(parents=True, exist_ok=True)
    net = _Logits(model.backbone).eval()
    clip = torch.randn(int(cfg.batch_size), 3, frames, height, width)
    with torch.no_grad():
        expected = net(clip)
        if fmt == "onnx":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                net, (clip,), str(output), input_names=["video"], output_names=["logits"],
                dynamic_shapes={"video": {0: batch}}, dynamo=True,
            )  # fmt: skip
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, clip), str(output))
        else:
            batch = torch.export.Dim("batch", min=1)
            torch.export.save(torch.export.export(net, (clip,), dynamic_shapes={"video": {0: batch}}), str(output))
        got = _run_exported(fmt, output, clip)
    diff = float((got - expected).abs().max())
    if diff > float(cfg.tolerance):
        raise RuntimeError(f"{output}: the exported model's logits differ from the checkpoint's by {diff:.2e}")
    data = dict(data_cfg)
    names = model.hparams.get("class_names") or [str(i) for i in range(model.hparams.num_classes)]
    description = {
        "file": output.name,
        "format": fmt,
        "checkpoint": str(ckpt.resolve()),
        "model": model.hparams.model_name,
        "class_names": list(names),
        "input": {"shape": ["batch", 3, frames, height, width], "dtype": "float32", "layout": "B, C, T, H, W"},
        "preprocessing": {
            "pixels": "RGB scaled to [0, 1], then (x - mean) / std per channel",
            "mean": list(data.get("mean") or MEAN),
            "std": list(data.get("std") or STD),
            "num_frames": frames,
            "sampling_rate": data.get("sampling_rate"),
            "sampling": "segment" if data.get("_target_", "").endswith("SSv2DataModule") else "dense",
            "short_side": data.get("eval_short_side"),
            "crop_size": height,
            "views": {"clips": data.get("eval_clips", 1), "crops": data.get("eval_crops", 1)},
        },
        "output": "logits (batch, num_classes); softmax them and average over the views of a video",
        "max_abs_diff_vs_checkpoint": diff,
    }
    write_json(output.with_suffix(".json"), description)
    print_summary(
        f"videorec export: {model.hparams.model_name} -> {fmt}",
        {"max |logits - checkpoint's|": diff, "classes": len(names)},
        {"model file": str(output), "description": str(output.with_suffix(".json"))},
    )
    return description


@hydra.main(version_base="1.3", config_path="pkg://videorec.conf", config_name="export")
def _main(cfg: DictConfig) -> None:
    export(cfg)


def main() -> None:
    """The command line: ``data.<key>=`` overrides apply on top of the checkpoint's stored data configuration."""
    main_on_stored_data(_main)


if __name__ == "__main__":
    main()
