"""Reference implementations that videorec's models are held to, built with the libraries that ship them.

torchvision's MViT v1/v2, pytorchvideo's MViT-B and timm's Twins (run frame by frame) at any input size, with random
weights: the parity tests load their weights into our models and compare outputs, and ``scripts/bench_models.py``
times them against ours. The libraries are imported when a builder runs (timm and pytorchvideo come with the ``dev``
extra), never by ``videorec.models`` itself.

``REFERENCES`` maps a registry name to ``{label: builder}``, ``builder(num_frames, img_size, num_classes)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

__all__ = ["Builder", "REFERENCES", "PerFrame", "pytorchvideo_mvit_b", "timm_twins", "torchvision_mvit"]

Builder = Callable[[int, int, int], nn.Module]


@contextlib.contextmanager
def _torchvision_mvit_size(num_frames: int, img_size: int) -> Iterator[None]:
    """Make torchvision's ``mvit_v1_b`` / ``mvit_v2_s`` build for another input size (its private ``_mvit`` builder)."""
    import torchvision.models.video.mvit as tv_mvit

    original = tv_mvit._mvit

    def sized(**kwargs):
        kwargs.update(spatial_size=(img_size, img_size), temporal_size=num_frames)
        return original(**kwargs)

    tv_mvit._mvit = sized
    try:
        yield
    finally:
        tv_mvit._mvit = original


def torchvision_mvit(name: str) -> Builder:
    """Builder for torchvision's ``mvit_v1_b`` or ``mvit_v2_s`` at any input size, random weights."""

    def build(num_frames: int, img_size: int, num_classes: int) -> nn.Module:
        import torchvision.models.video.mvit as tv_mvit

        with _torchvision_mvit_size(num_frames, img_size):
            return getattr(tv_mvit, name)(num_classes=num_classes)

    return build


# pytorchvideo's hub MViT-B configuration (16x4 and 32x3 share it; only the clip length differs)
PYTORCHVIDEO_MVIT_B = dict(
    embed_dim_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
    atten_head_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
    pool_q_stride_size=[[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]],
    pool_kv_stride_adaptive=[1, 8, 8],
    pool_kvq_kernel=[3, 3, 3],
)


def pytorchvideo_mvit_b(num_frames: int, img_size: int, num_classes: int) -> nn.Module:
    """pytorchvideo's MViT-B (``create_multiscale_vision_transformers``), random weights."""
    # pytorchvideo.transforms is broken with current torchvision; import the model module directly
    from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers

    return create_multiscale_vision_transformers(
        spatial_size=img_size, temporal_size=num_frames, head_num_classes=num_classes, **PYTORCHVIDEO_MVIT_B
    )


class PerFrame(nn.Module):
    """An image model on every frame of (B, C, T, H, W), logits averaged over time (T=1: the image model itself)."""

    def __init__(self, image_model: nn.Module) -> None:
        super().__init__()
        self.image_model = image_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # (B, C, T, H, W) -> (B * T, C, H, W)
        return self.image_model(frames).reshape(B, T, -1).mean(1)


def timm_twins(name: str) -> Builder:
    """Builder for timm's image ``twins_pcpvt_small`` / ``twins_svt_small`` run frame by frame, random weights."""

    def build(num_frames: int, img_size: int, num_classes: int) -> nn.Module:
        import timm

        return PerFrame(timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size))

    return build


REFERENCES: dict[str, dict[str, Builder]] = {
    "mvit_b": {"torchvision mvit_v1_b": torchvision_mvit("mvit_v1_b"), "pytorchvideo MViT-B": pytorchvideo_mvit_b},
    "mvit_b_32x3": {"torchvision mvit_v1_b": torchvision_mvit("mvit_v1_b"), "pytorchvideo MViT-B": pytorchvideo_mvit_b},
    "mvitv2_s": {"torchvision mvit_v2_s": torchvision_mvit("mvit_v2_s")},
    "twins_pcpvt_s": {"timm twins_pcpvt_small/frame": timm_twins("twins_pcpvt_small")},
    "twins_svt_s": {"timm twins_svt_small/frame": timm_twins("twins_svt_small")},
}
