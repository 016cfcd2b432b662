"""XFormer: published size, cross feature attention against an explicit N x N form, MV3 blocks, image mode."""

import pytest
import torch
import torch.nn.functional as F

from videorec.models import create_model, load_pretrained
from videorec.models.xformer import CrossFeatureAttention, MV3Block, SqueezeExcite, XFormer, cross_feature_attention
from videorec.utils.profile import count_params


def test_image_params_match_published():
    with torch.device("meta"):  # sizes only
        image = create_model("xformer", num_classes=1000, num_frames=1, img_size=256)
        video = create_model("xformer", num_classes=1000)
    assert abs(count_params(image) - 5.5e6) / 5.5e6 < 0.02
    assert count_params(image) < count_params(video) < 1.02 * 5.5e6


def test_stage_plan():
    with torch.device("meta"):
        model = create_model("xformer", num_classes=1000, num_frames=1)
    xf = [m for m in model.modules() if type(m).__name__ == "XFStage"]
    assert [len(s.blocks) for s in xf] == [2, 4, 3]
    assert [s.blocks[0].norm1.normalized_shape[0] for s in xf] == [144, 192, 240]
    assert [s.blocks[0].mlp.fc1.out_features / s.blocks[0].mlp.fc1.in_features for s in xf] == [2, 2, 3]
    assert all(s.blocks[0].attn.qkv.out_features == 3 * 96 for s in xf)
    assert all(isinstance(s.blocks[0].mlp.act, torch.nn.GELU) for s in xf)
    mv3 = [m for m in model.modules() if isinstance(m, MV3Block)]
    assert len(mv3) == 1 + 3 + 3 and all(isinstance(b.se, SqueezeExcite) for b in mv3)
    assert all(b.expand[0].out_channels == 4 * b.expand[0].in_channels for b in mv3)


def _explicit_xfa(q, k, v, kernel, temperature):
    """The same operator with its N x N map built: A = tau * norm(Q) diag(w) norm(K)^T / N, out = A V."""
    qn, kn = F.normalize(q.double(), dim=-1), F.normalize(k.double(), dim=-1)
    attn = temperature.double() * (qn * kernel.double()) @ kn.transpose(-2, -1) / k.shape[-2]  # (B, h, N, N)
    return attn @ v.double()


def test_xfa_equals_explicit_form():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8) for _ in range(3))
    kernel, temperature = torch.rand(3, 1, 8) + 0.5, torch.rand(3, 1, 1) + 0.5
    out = cross_feature_attention(q, k, v, kernel, temperature)
    torch.testing.assert_close(out.double(), _explicit_xfa(q, k, v, kernel, temperature), rtol=1e-5, atol=1e-6)


def test_xfa_has_no_softmax_and_a_live_temperature():
    """Without softmax the output is linear in the temperature, and Q/K magnitudes do not matter (L2 norm)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    kernel, tau = torch.ones(2, 1, 8), torch.ones(2, 1, 1)
    base = cross_feature_attention(q, k, v, kernel, tau)
    torch.testing.assert_close(cross_feature_attention(q, k, v, kernel, 3 * tau), 3 * base)
    torch.testing.assert_close(cross_feature_attention(5 * q, 0.1 * k, v, kernel, tau), base)


def test_xfa_module_gradients_reach_kernel_and_temperature():
    attn = CrossFeatureAttention(48, qkv_dim=32, num_heads=2)
    attn(torch.randn(2, 40, 48)).square().sum().backward()
    assert attn.kernel.grad.abs().sum() > 0 and attn.temperature.grad.abs().sum() > 0
    model = create_model("xformer_tiny", num_classes=3)
    names = model.no_weight_decay()
    assert names and all(n.endswith((".attn.kernel", ".attn.temperature")) for n in names)


def test_image_model_weights_give_the_same_output_on_one_frame(tmp_path):
    torch.manual_seed(0)
    image = create_model("xformer_tiny", num_classes=5, num_frames=1).eval()
    assert {m.weight.shape[2] for m in image.modules() if isinstance(m, torch.nn.Conv3d)} == {1}
    # non-trivial BatchNorm statistics, so that inflating them wrongly would show
    for m in image.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "xformer_image.pth"
    torch.save(image.state_dict(), path)
    video = create_model("xformer_tiny", num_classes=5).eval()
    report = load_pretrained(video, path)
    assert report.format == "xformer-image" and report.inflated
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(video(img), image(img), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(video(img), video(img.unsqueeze(2)))


@pytest.mark.parametrize(("frames", "size"), [(1, 32), (3, 56), (8, 64), (2, 96)])
def test_any_grid_runs(frames, size):
    """Odd feature maps (56 px -> 7x7 at stride 8) are resized around the 2x2 unfolding."""
    model = create_model("xformer_tiny", num_classes=4, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, frames, size, size + 8))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


def test_tokens_of_all_frames_attend_together():
    """An XF stage mixes time: changing one frame changes the output at another frame."""
    torch.manual_seed(0)
    model = create_model("xformer_tiny", num_classes=4).eval()
    stage = model.stages[2][1]
    x = torch.randn(1, stage.local[0].in_channels, 4, 8, 8)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(stage(x)[:, :, 3], stage(x2)[:, :, 3])


def test_bad_overrides_fail_clearly():
    with pytest.raises(ValueError, match="XFormer: img_size"):
        create_model("xformer_tiny", img_size=16)
    with pytest.raises(ValueError, match="XFormer: num_frames"):
        create_model("xformer_tiny", num_frames=0)
    with pytest.raises(ValueError, match="qkv_dim"):
        create_model("xformer_tiny", qkv_dim=30, xfa_heads=4)


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = create_model("xformer_tiny", num_classes=3, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 2, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    assert isinstance(model, XFormer) and any(getattr(m, "grad_checkpointing", False) for m in model.modules())
    out = model(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()


def test_no_softmax_attention_is_used(monkeypatch):
    import videorec.models.layers as layers

    calls = []
    monkeypatch.setattr(layers, "attention", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1))
    create_model("xformer_tiny", num_classes=3)(torch.randn(2, 3, 2, 32, 32))
    assert not calls
