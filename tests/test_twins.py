"""Twins-PCPVT / Twins-SVT in space-time: timm parity, sizes, SVT window masking, inflation, attention paths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF_DIR, load_script

from videorec.models import CheckpointError, create_model
from videorec.models.twins import LocallyGroupedAttn3d, SameTimeConv3d, Twins
from videorec.utils.profile import count_gflops, count_params

timm = pytest.importorskip("timm")

CONF = CONF_DIR / "model"
TIMM_NAMES = {"twins_pcpvt_s": "twins_pcpvt_small", "twins_svt_s": "twins_svt_small"}
# timm-equivalent image architectures of our tiny variants (the window becomes (1, w, w) on a one-frame video)
TIMM_TINY = {
    "twins_pcpvt_tiny": dict(
        embed_dims=(32, 64, 128, 128), num_heads=(1, 2, 4, 4), mlp_ratios=(4, 4, 4, 4), depths=(1, 1, 2, 1)
    ),
    "twins_svt_tiny": dict(
        embed_dims=(32, 64, 128, 128),
        num_heads=(1, 2, 4, 4),
        mlp_ratios=(4, 4, 4, 4),
        depths=(2, 2, 2, 2),
        wss=(4, 4, 4, 4),
    ),
}


def _timm_checkpoint(model: torch.nn.Module, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def timm_small(tmp_path_factory):
    """timm twins_pcpvt_small / twins_svt_small with random weights, their checkpoints and logits on one image."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("timm_twins")
    image = torch.randn(1, 3, 224, 224)
    out = {}
    for ours, theirs in TIMM_NAMES.items():
        ref = timm.create_model(theirs, pretrained=False).eval()
        with torch.no_grad():
            logits = ref(image)
        out[ours] = (_timm_checkpoint(ref, tmp, theirs), logits, ref)
    return image, out


@pytest.mark.parametrize("inflate", ["center", "mean"])
@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_timm_parity_images_and_one_frame_videos(timm_small, name, inflate):
    image, refs = timm_small
    path, expected, _ = refs[name]
    model = create_model(name, num_classes=1000, pretrained=path, inflate=inflate).eval()
    # the 2D kernels really were inflated to temporal extents > 1 (stage-1 tubelets, 3x3x3 PEGs)
    assert model.patch_embeds[0].proj.weight.shape[2] == 2 and model.pos_block[0].proj.weight.shape[2] == 3
    with torch.no_grad():
        from_image = model(image)
        from_video = model(image.unsqueeze(2))  # (B, 3, 1, 224, 224)
    assert (from_image - expected).abs().max() < 1e-4
    assert (from_video - expected).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_image_mode_params_and_gflops(timm_small, name):
    image, refs = timm_small
    _, _, ref = refs[name]
    model = create_model(name, num_classes=1000).eval()
    published = {"twins_pcpvt_s": (24.1e6, 3.81), "twins_svt_s": (24.0e6, 2.93)}[name]
    params, gflops = count_params(model), count_gflops(model, image)
    assert abs(params / published[0] - 1) < 0.02, params
    assert abs(gflops / published[1] - 1) < 0.01, gflops
    assert abs(gflops / count_gflops(ref, image) - 1) < 0.01


@pytest.mark.parametrize("name", list(TIMM_TINY))
def test_tiny_matches_timm_architecture(name, tmp_path):
    """The tiny variants are Twins too: a timm image model of the same shape loads and matches on one frame."""
    torch.manual_seed(1)
    ref = timm.models.twins.Twins(num_classes=8, **TIMM_TINY[name]).eval()
    path = _timm_checkpoint(ref, tmp_path, name)
    model = create_model(name, pretrained=path, inflate="mean").eval()
    x = torch.randn(2, 3, 128, 128)  # grids 32/16/8/4: the 4x4 windows divide them, as timm's zero padding needs
    with torch.no_grad():
        assert (model(x.unsqueeze(2)) - ref(x)).abs().max() < 1e-4


def _reference_window_attention(attn: LocallyGroupedAttn3d, x: torch.Tensor, size) -> torch.Tensor:
    """Per-window softmax attention written out by hand on the real (unpadded) tokens of each window."""
    B, N, C = x.shape
    T, H, W = size
    wt, wh, ww = (min(w, s) for w, s in zip(attn.window_size, size, strict=True))
    h, d = attn.num_heads, C // attn.num_heads
    qkv = attn.qkv(x).reshape(B, N, 3, h, d)
    grid_index = torch.arange(N).reshape(T, H, W)
    out = torch.empty(B, N, h, d)
    for t0 in range(0, T, wt):
        for h0 in range(0, H, wh):
            for w0 in range(0, W, ww):
                idx = grid_index[t0 : t0 + wt, h0 : h0 + wh, w0 : w0 + ww].reshape(-1)
                q, k, v = qkv[:, idx].unbind(2)  # (B, n, h, d), n <= wt * wh * ww
                scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d)
                out[:, idx] = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v)
    return attn.proj(out.reshape(B, N, C))


@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize(("size", "window"), [((3, 5, 6), (2, 4, 4)), ((4, 7, 9), (2, 3, 4)), ((1, 3, 3), (2, 7, 7))])
def test_svt_window_padding_is_masked(monkeypatch, size, window, fused):
    """A grid the window does not divide: padded keys never take part in any window's softmax."""
    monkeypatch.setenv("VIDEOREC_FUSED_ATTN", fused)
    torch.manual_seed(0)
    attn = LocallyGroupedAttn3d(32, num_heads=4, window_size=window).eval()
    x = torch.randn(2, math.prod(size), 32)
    with torch.no_grad():
        got = attn(x, size)
        expected = _reference_window_attention(attn, x, size)
    assert (got - expected).abs().max() < 1e-5


def test_svt_window_divisible_grid_needs_no_mask(monkeypatch):
    """When windows divide the grid no mask is built (the fused kernel runs unmasked)."""
    seen = []
    import videorec.models.twins as twins_module

    real = twins_module.attention
    monkeypatch.setattr(twins_module, "attention", lambda *a, **k: seen.append(k.get("attn_mask")) or real(*a, **k))
    attn = LocallyGroupedAttn3d(16, num_heads=2, window_size=(2, 4, 4))
    attn(torch.randn(1, 4 * 8 * 8, 16), (4, 8, 8))
    attn(torch.randn(1, 3 * 8 * 6, 16), (3, 8, 6))
    assert seen[0] is None and seen[1] is not None and seen[1].dtype == torch.bool


@pytest.mark.parametrize("name", ["twins_pcpvt_tiny", "twins_svt_tiny"])
def test_fused_and_reference_attention_agree(monkeypatch, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 6, 96, 96)  # 3 token frames and 24/12/6/3 grids: SVT windows need padding and masks
    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("VIDEOREC_FUSED_ATTN", flag)
        with torch.no_grad():
            outs.append(model(x))
    assert torch.isfinite(outs[0]).all()
    assert (outs[0] - outs[1]).abs().max() < 1e-5


def _tiny_2d_checkpoint(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(2)
    ref = timm.models.twins.Twins(num_classes=8, **TIMM_TINY[name])
    return _timm_checkpoint(ref, tmp_path, f"{name}_2d"), ref.eval()


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
@pytest.mark.parametrize("inflate", ["center", "mean"])
@pytest.mark.parametrize("name", ["twins_pcpvt_tiny", "twins_svt_tiny"])
def test_one_frame_video_is_the_image_model(tmp_path, name, inflate, padding):
    """Temporal kernels > 1 everywhere (tubelet 2, sub-sampling 2, PEG 3): one frame still equals the 2D model."""
    path, ref = _tiny_2d_checkpoint(tmp_path, name)
    model = create_model(
        name, pretrained=path, inflate=inflate, temporal_padding=padding, temporal_sr_ratios=(2, 2, 2, 1)
    ).eval()
    assert model.blocks[0][-1].attn.sr.weight.shape[2] == 2
    img = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert (model(img.unsqueeze(2)) - ref(img)).abs().max() < 1e-4


@pytest.mark.parametrize("inflate", ["center", "mean"])
@pytest.mark.parametrize("name", ["twins_pcpvt_tiny", "twins_svt_tiny"])
def test_static_video_gives_the_image_response_with_replicate_padding(tmp_path, name, inflate):
    """With replicate temporal padding, a video of one repeated frame reproduces the image model exactly."""
    path, ref = _tiny_2d_checkpoint(tmp_path, name)
    model = create_model(
        name, pretrained=path, inflate=inflate, temporal_padding="replicate", temporal_sr_ratios=(2, 2, 1, 1)
    ).eval()
    img = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = ref(img)
        for frames in (2, 3, 4):
            video = img.unsqueeze(2).expand(-1, -1, frames, -1, -1)
            assert (model(video) - expected).abs().max() < 1e-4, frames
        # a moving video is not static: the temporal kernels see different frames
        moving = torch.stack([img, img.flip(-1), img.flip(-2), img], dim=2)
        assert (model(moving) - expected).abs().max() > 1e-3


def test_zero_padding_lets_the_model_see_clip_borders(tmp_path):
    """With zero temporal padding (the default) the border frames of a static clip differ from the inner ones."""
    path, ref = _tiny_2d_checkpoint(tmp_path, "twins_pcpvt_tiny")
    model = create_model("twins_pcpvt_tiny", pretrained=path, inflate="mean").eval()
    assert model.pos_block[0].proj.temporal_padding == "zeros"
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(img.unsqueeze(2).expand(-1, -1, 8, -1, -1))  # (1, C, 4, 2, 2)
        assert (feats[:, :, 0] - feats[:, :, 1]).abs().max() > 1e-3
        assert (feats[:, :, 1] - feats[:, :, 2]).abs().max() < 1e-4  # mirror frames of a symmetric clip


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_same_time_conv_padding(padding):
    """One frame: the kernel summed over time (what replicate padding computes). More: "same" padding in time."""
    torch.manual_seed(0)
    conv = SameTimeConv3d(4, 6, (3, 3, 3), stride=(2, 1, 1), spatial_padding=(1, 1), temporal_padding=padding)
    x = torch.randn(2, 4, 1, 5, 5)
    padded = F.conv3d(x.expand(-1, -1, 3, -1, -1), conv.weight, conv.bias, padding=(0, 1, 1))
    assert torch.allclose(conv(x), padded, atol=1e-5)
    x = torch.randn(1, 4, 6, 5, 5)  # ceil(6 / 2) = 3 frames need 1 frame of padding, which goes first
    mode = "replicate" if padding == "replicate" else "constant"
    expected = F.conv3d(
        F.pad(x, (0, 0, 0, 0, 1, 0), mode=mode), conv.weight, conv.bias, stride=(2, 1, 1), padding=(0, 1, 1)
    )
    assert torch.allclose(conv(x), expected, atol=1e-5)
    for t in (2, 5, 8):
        assert conv(torch.randn(1, 4, t, 5, 5)).shape[2] == -(-t // 2)


@pytest.mark.parametrize("name", ["twins_pcpvt_tiny", "twins_svt_tiny"])
def test_tiny_video_shapes_overrides_and_errors(name):
    model = create_model(name, num_classes=3, num_frames=4, img_size=32).eval()
    assert model.num_frames == 4 and model.img_size == 32
    with torch.no_grad():
        for shape in ((2, 3, 4, 32, 32), (2, 3, 5, 64, 32), (1, 3, 32, 32)):
            out = model(torch.randn(*shape))
            assert out.shape == (shape[0], 3) and torch.isfinite(out).all()
        feats = model.forward_features(torch.randn(1, 3, 8, 64, 64))
    assert feats.shape == (1, model.num_features, 4, 2, 2)
    with pytest.raises(ValueError, match="Twins.*multiple of 32"):
        create_model(name, img_size=48)
    with pytest.raises(ValueError, match="Twins.*multiples of 32"):
        model(torch.randn(1, 3, 2, 48, 48))
    with pytest.raises(ValueError, match="Twins.*reduction ratio"):
        create_model(name, img_size=32, sr_ratios=(16, 4, 2, 1))
    with pytest.raises(ValueError, match="temporal_padding"):
        create_model(name, temporal_padding="reflect")


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("twins_svt_tiny", num_classes=4).train()
    x = torch.randn(2, 3, 4, 64, 64)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[n], atol=1e-5), n


def test_no_weight_decay_names_the_pegs():
    model = create_model("twins_pcpvt_tiny")
    names = model.no_weight_decay()
    assert names == {n for n, _ in model.named_parameters() if n.startswith("pos_block.")}
    assert "pos_block.0.proj.weight" in names and len(names) == 8


def test_checkpoint_round_trip_head_drop_and_errors(tmp_path):
    torch.manual_seed(0)
    src = create_model("twins_svt_tiny", num_classes=8).eval()
    path = tmp_path / "ours.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    x = torch.randn(1, 3, 4, 64, 64)
    same = create_model("twins_svt_tiny", num_classes=8, pretrained=path).eval()
    with torch.no_grad():
        assert torch.equal(same(x), src(x))
    with pytest.warns(UserWarning, match="head"):
        other = create_model("twins_svt_tiny", num_classes=5, pretrained=path)
    assert torch.equal(other.patch_embeds[0].proj.weight, src.patch_embeds[0].proj.weight)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.0\.attn\.qkv"):
        # a PCPVT checkpoint lacks SVT's LSA weights and has GSA weights where SVT has LSA
        create_model("twins_svt_tiny", pretrained=_timm_checkpoint(create_model("twins_pcpvt_tiny"), tmp_path, "p"))


def test_timm_checkpoint_keys_are_renamed(tmp_path):
    from videorec.models.twins import checkpoint_filter_fn

    ref = timm.models.twins.Twins(num_classes=8, **TIMM_TINY["twins_pcpvt_tiny"])
    model = create_model("twins_pcpvt_tiny")
    converted, fmt = checkpoint_filter_fn(ref.state_dict(), model)
    assert fmt == "timm-twins"
    assert "pos_block.0.proj.weight" in converted and not any(".proj.0." in k for k in converted)
    assert set(converted) == set(model.state_dict())


@pytest.mark.parametrize("name", ["twins_pcpvt_s", "twins_svt_s", "twins_pcpvt_tiny", "twins_svt_tiny"])
def test_model_config_file(name, compose, tmp_path):
    cfg = compose("train", [f"model={name}"], tmp_path).model
    assert cfg.name == name
    assert set(cfg) >= {"name", "kwargs", "pretrained"}
    assert isinstance(create_model(name, **cfg.kwargs), Twins)


def test_inflation_experiment_summary_counts_wins_and_averages(capsys):
    """The inflation experiment's summary over seeds: mean and spread of the best accuracy, and seeds won."""
    from rich.console import Console

    module = load_script("inflation_experiment")
    per_seed = {
        0: {"inflate=center": [0.2, 0.4], "inflate=mean": [0.3, 0.6], "random init": [0.1, 0.2]},
        1: {"inflate=center": [0.5, 0.45], "inflate=mean": [0.2, 0.3], "random init": [0.1, 0.4]},
        2: {"inflate=center": [0.1, 0.2], "inflate=mean": [0.5, 0.7], "random init": [0.3, 0.3]},
    }
    summary = module.summarise(per_seed, Console(width=120))
    assert summary["inflate=mean"]["wins"] == 2 and summary["inflate=center"]["wins"] == 1
    assert summary["random init"]["wins"] == 0
    assert summary["inflate=center"]["best_mean"] == pytest.approx((0.4 + 0.5 + 0.2) / 3)
    assert summary["inflate=mean"]["last_mean"] == pytest.approx((0.6 + 0.3 + 0.7) / 3)
    assert summary["random init"]["best_std"] == pytest.approx(torch.tensor([0.2, 0.4, 0.3]).std(unbiased=False).item())
    assert "over 3 seeds" in capsys.readouterr().out
