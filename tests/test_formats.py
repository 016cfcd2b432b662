"""Checkpoint formats carry the architecture settings they imply: a file in any supported format loads with
``pretrained=`` alone (no hint about its quirks) and reproduces its source; explicit overrides still win.

Installable formats (timm Twins here; torchvision and pytorchvideo MViT in tests/test_mvit.py) are built with their own
library, every weight perturbed, saved as users download them. Formats whose code cannot be installed (PySlowFast,
official UniFormer) are written with their key names and containers from our models, and the test checks the detected
format name and the settings applied. The conversion script runs as users run it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_mvit import _to_slowfast
from test_uniformer import _official_3d_state, _to_2d

from videorec.models import create_model, load_pretrained, references
from videorec.models import mvit as mvit_module
from videorec.models import twins as twins_module
from videorec.models import uniformer as uniformer_module
from videorec.models.checkpoints import FormatNote, implied_settings
from videorec.models.mvit import MultiScaleAttention
from videorec.models.twins import LocallyGroupedAttn3d

FAMILIES = {"mvit": mvit_module, "twins": twins_module, "uniformer": uniformer_module}


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every weight (norms and biases included) and BatchNorm statistic, so that no key mapped to the
    wrong place and no setting left at another value can hide behind an initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.3, 0.3, generator=g)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def logits_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        return (a(x) - b(x if y is None else y)).abs().max().item()


def pool_eps(model: torch.nn.Module) -> set[float]:
    return {
        n.eps
        for m in model.modules()
        if isinstance(m, MultiScaleAttention)
        for n in (m.norm_q, m.norm_k, m.norm_v)
        if n
    }


# --------------------------------------------------------------------------------------------------------------------
# The notes: every setting the loader applies is written down with its source
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_format_settings_are_the_notes_that_differ_from_ours(family):
    module = FAMILIES[family]
    notes: list[FormatNote] = module.FORMAT_NOTES
    assert notes and all(n.source and n.value for n in notes)
    cls = getattr(module, {"mvit": "MViT", "twins": "Twins", "uniformer": "UniFormer"}[family])
    assert cls.format_settings == implied_settings(notes)
    if not cls.format_settings:  # UniFormer: the official code's settings are all ours
        assert not hasattr(cls, "apply_format_setting")
        return
    built = create_model("twins_svt_tiny" if family == "twins" else f"{family}_tiny")
    before = {k: v.clone() for k, v in built.state_dict().items()}
    for settings in cls.format_settings.values():
        for name, value in settings.items():
            built.apply_format_setting(name, value)  # applied to the built model: no key or shape changes
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in before.items()}
    with pytest.raises(ValueError, match="no format setting 'no_such_setting'"):
        built.apply_format_setting("no_such_setting", 1)


def test_readme_lists_every_format_and_what_it_implies():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Checkpoint formats") :]
    section = section[: section.index("\n#", 4)]
    for module in FAMILIES.values():
        for note in module.FORMAT_NOTES:
            assert f"`{note.format}`" in section, note.format
            for name, value in note.implies:
                assert f"`{name}={value}`" in section, (note.format, name)


# --------------------------------------------------------------------------------------------------------------------
# Installable: timm Twins (plain state dict of timm's own model)
# --------------------------------------------------------------------------------------------------------------------

timm = pytest.importorskip("timm")


@pytest.mark.parametrize(
    ("ours", "theirs"), [("twins_pcpvt_s", "twins_pcpvt_small"), ("twins_svt_s", "twins_svt_small")]
)
def test_timm_twins_loads_with_no_arguments(tmp_path, ours, theirs):
    torch.manual_seed(0)
    ref = perturb(references.timm_twins(theirs)(1, 224, 1000).image_model)
    path = tmp_path / f"{theirs}.pth"
    torch.save(ref.state_dict(), path)
    model = create_model(ours, num_classes=1000, pretrained=path).eval()
    assert model.applied_format_settings == {"lsa_padding": "zeros"} and model.lsa_padding == "zeros"
    assert model.patch_embeds[0].proj.weight.shape[2] == 2  # inflated from timm's 2D kernels
    x = torch.randn(1, 3, 224, 224)
    diff = logits_diff(ref, model, x, x.unsqueeze(2))  # the image, and the image as a one-frame video
    assert diff < 1e-5, diff  # measured 2.1e-6 (PCPVT) and 1.9e-6 (SVT) on logits of size ~3.5


def test_timm_svt_window_padding_travels_with_the_format(tmp_path):
    """Off 224 px SVT windows do not divide the grid; timm attends to its zero padding, the format says so."""
    torch.manual_seed(0)
    arch = dict(embed_dims=(32, 64, 128, 128), num_heads=(1, 2, 4, 4), mlp_ratios=(4, 4, 4, 4), depths=(2, 2, 2, 2))
    ref = perturb(timm.models.twins.Twins(num_classes=8, wss=(4, 4, 4, 4), **arch))
    torch.save(ref.state_dict(), tmp_path / "svt.pth")
    x = torch.randn(2, 3, 96, 96)  # grids 24 / 12 / 6 / 3: 4x4 windows leave padding in stages 3 and 4
    model = create_model("twins_svt_tiny", img_size=96, pretrained=tmp_path / "svt.pth")
    assert {m.padding for m in model.modules() if isinstance(m, LocallyGroupedAttn3d)} == {"zeros"}
    diff = logits_diff(ref, model.eval(), x, x.unsqueeze(2))
    assert diff < 1e-5, diff
    # an explicit override wins, and there the padding does change the output
    masked = create_model("twins_svt_tiny", img_size=96, lsa_padding="masked", pretrained=tmp_path / "svt.pth")
    assert {m.padding for m in masked.modules() if isinstance(m, LocallyGroupedAttn3d)} == {"masked"}
    assert logits_diff(ref, masked.eval(), x, x.unsqueeze(2)) > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Not installable: PySlowFast MViT (.pyth with model_state)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("separate_qkv", "fmt", "eps"), [(False, "slowfast-mvit", 1e-6), (True, "slowfast-mvit-2021", 1e-5)]
)
def test_slowfast_formats_are_told_apart(tmp_path, separate_qkv, fmt, eps):
    torch.manual_seed(0)
    src = perturb(create_model("mvit_tiny", pool_norm_eps=eps))
    path = tmp_path / "MVIT.pyth"
    torch.save({"model_state": _to_slowfast(src.state_dict(), separate_qkv), "epoch": 200, "cfg": "..."}, path)
    model = create_model("mvit_tiny")
    report = load_pretrained(model, path)
    assert report.format == f"{fmt} (model_state)"
    assert report.settings == ({"pool_norm_eps": 1e-5} if separate_qkv else {})
    assert pool_eps(model) == {eps} and model.norm.eps == model.blocks[0].norm1.eps == 1e-6  # pooling norms only
    x = torch.randn(2, 3, 8, 64, 64)
    assert logits_diff(src, model.eval(), x) < 1e-5
    # the user's own value wins over the format's
    mine = create_model("mvit_tiny", pool_norm_eps=1e-6, pretrained=path)
    assert pool_eps(mine) == {1e-6}


# --------------------------------------------------------------------------------------------------------------------
# Not installable: official UniFormer 3D ("model_state" / "model") and 2D ("model"), token labeling
# --------------------------------------------------------------------------------------------------------------------


def test_official_uniformer_3d_implies_our_defaults(tmp_path):
    src = perturb(_official_3d_state())
    torch.save({"model": src.state_dict()}, tmp_path / "uniformer_small_k400_16x4.pth")
    model = create_model("uniformer_tiny", num_classes=6)
    report = load_pretrained(model, tmp_path / "uniformer_small_k400_16x4.pth")
    assert report.format == "uniformer (model)" and report.settings == {} and not report.inflated
    # the settings FORMAT_NOTES reads from the official code are the ones the model has
    assert model.blocks3[0].norm1.eps == 1e-6 and model.patch_embed1.norm.eps == 1e-5 and model.norm.eps == 1e-5
    assert model.blocks3[0].attn.qkv.bias is not None
    assert logits_diff(src, model.eval(), torch.randn(2, 3, 8, 64, 64)) < 1e-5


@pytest.mark.parametrize("token_labeling", [False, True])
def test_official_uniformer_2d_formats(tmp_path, token_labeling):
    sd = _to_2d(perturb(_official_3d_state(num_classes=1000)).state_dict())
    if token_labeling:
        sd["aux_head.weight"], sd["aux_head.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save({"model": sd}, tmp_path / "in1k.pth")
    model = create_model("uniformer_tiny", num_classes=1000)
    report = load_pretrained(model, tmp_path / "in1k.pth")
    expected = "uniformer-2d-token-labeling" if token_labeling else "uniformer-2d"
    assert report.format == f"{expected} (model)" and report.settings == {}
    assert "patch_embed1.proj.weight" in report.inflated
    assert sorted(report.dropped) == (["aux_head.bias", "aux_head.weight"] if token_labeling else [])
    assert torch.equal(model.head.weight, sd["head.weight"])


# --------------------------------------------------------------------------------------------------------------------
# Ours: a Lightning checkpoint restores the settings its run's pretrained file implied
# --------------------------------------------------------------------------------------------------------------------


def _lightning_file(lit, path: Path) -> Path:
    import lightning

    torch.save(
        {"state_dict": lit.state_dict(), "hyper_parameters": dict(lit.hparams), "pytorch-lightning_version":
         lightning.__version__},
        path,
    )  # fmt: skip
    return path


def test_lightning_checkpoint_keeps_the_settings_of_its_pretrained_file(tmp_path):
    from videorec.lit import VideoClassifier

    torch.manual_seed(0)
    src = perturb(create_model("mvit_tiny", pool_norm_eps=1e-5))
    torch.save({"model_state": _to_slowfast(src.state_dict(), separate_qkv=True)}, tmp_path / "sf.pyth")
    lit = VideoClassifier(model_name="mvit_tiny", num_classes=8, pretrained=str(tmp_path / "sf.pyth"))
    assert pool_eps(lit.backbone) == {1e-5} and lit.hparams.backbone_kwargs == {"pool_norm_eps": 1e-5}
    ckpt = _lightning_file(lit, tmp_path / "run.ckpt")
    x = torch.randn(1, 3, 8, 64, 64)
    # restored by Lightning: the pretrained file is not read again, the setting comes from the hyperparameters
    restored = VideoClassifier.load_from_checkpoint(ckpt).eval()
    assert pool_eps(restored.backbone) == {1e-5} and logits_diff(src, restored.backbone, x) < 1e-5
    # loaded as pretrained= of a new model: our own format, the stored setting applied
    model = create_model("mvit_tiny")
    report = load_pretrained(model, ckpt)
    assert report.format == "mvit (lightning)" and report.settings == {"pool_norm_eps": 1e-5}
    assert logits_diff(src, model.eval(), x) < 1e-5
    assert pool_eps(create_model("mvit_tiny", pool_norm_eps=1e-6, pretrained=ckpt)) == {1e-6}  # explicit wins


# --------------------------------------------------------------------------------------------------------------------
# scripts/convert_checkpoint.py, run as users run it
# --------------------------------------------------------------------------------------------------------------------


def _convert(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _line(stdout: str, label: str) -> str:
    (line,) = [x for x in stdout.splitlines() if x.startswith(f"{label}:")]
    return line


def test_convert_script_summary_pytorchvideo_to_lightning(tmp_path):
    torch.manual_seed(0)
    ref = perturb(references.pytorchvideo_mvit_b(4, 64, 10))
    src = tmp_path / "MVIT_B_16x4.pyth"
    torch.save({"model_state": ref.state_dict(), "epoch": 200}, src)
    dst = tmp_path / "mvit_b.ckpt"
    stdout = _convert("mvit_b", str(src), str(dst), "--num-frames", "8", "--img-size", "96", "--num-classes", "10",
                      "--lightning")  # fmt: skip
    assert _line(stdout, "format") == "format:   pytorchvideo-mvit (model_state)"
    assert "pool_norm_eps=1e-05" in _line(stdout, "settings")
    resized = _line(stdout, "resized")  # the 4x64 tables resampled to 8x96: 2 -> 4 frames, 16x16 -> 24x24 tokens
    assert "pos_embed_spatial 1x256x96 -> 1x576x96" in resized and "pos_embed_temporal 1x2x96 -> 1x4x96" in resized
    assert _line(stdout, "inflated") == "inflated: none" and _line(stdout, "head") == "head:     kept"
    # the written file loads with pretrained= alone, settings included, to the same logits as the source file
    direct = create_model("mvit_b", num_classes=10, num_frames=8, img_size=96, pretrained=src).eval()
    again = create_model("mvit_b", num_classes=10, num_frames=8, img_size=96, pretrained=dst).eval()
    assert pool_eps(again) == {1e-5}
    x = torch.randn(1, 3, 8, 96, 96)
    assert logits_diff(direct, again, x) == 0.0


def test_convert_script_summary_timm_to_state_dict(tmp_path):
    torch.manual_seed(0)
    arch = dict(embed_dims=(32, 64, 128, 128), num_heads=(1, 2, 4, 4), mlp_ratios=(4, 4, 4, 4), depths=(1, 1, 2, 1))
    ref = perturb(timm.models.twins.Twins(num_classes=8, **arch))
    src = tmp_path / "pcpvt.pth"
    torch.save(ref.state_dict(), src)
    dst = tmp_path / "ours.pth"
    stdout = _convert("twins_pcpvt_tiny", str(src), str(dst))
    assert _line(stdout, "format") == "format:   timm-twins"
    assert "lsa_padding=zeros" in _line(stdout, "settings")
    inflated = _line(stdout, "inflated")
    assert "patch_embeds.0.proj.weight" in inflated and "pos_block.0.proj.weight" in inflated
    assert "lsa_padding='zeros'" in _line(stdout, "note")  # a state dict holds no settings: the summary says so
    x = torch.randn(2, 3, 64, 64)
    direct = create_model("twins_pcpvt_tiny", pretrained=src).eval()
    again = create_model("twins_pcpvt_tiny", lsa_padding="zeros", pretrained=dst).eval()
    assert logits_diff(direct, again, x.unsqueeze(2)) == 0.0
    assert logits_diff(ref, again, x, x.unsqueeze(2)) < 1e-5
