"""UniFormer: published sizes, official checkpoint formats, 2D -> 3D inflation."""

import pytest
import torch
import torch.nn.functional as F

from videorec.models import CheckpointError, create_model
from videorec.models.checkpoints import inflate_weight
from videorec.utils.profile import count_gflops, count_params


@pytest.mark.parametrize(("name", "params_m", "gflops"), [("uniformer_s", 21.4, 41.8), ("uniformer_b", 49.8, 96.7)])
def test_published_params_and_flops(name, params_m, gflops):
    with torch.device("meta"):  # no memory, no compute: shapes are enough to count
        model = create_model(name, num_classes=400)
        x = torch.empty(1, 3, 16, 224, 224)
    assert count_params(model) / 1e6 == pytest.approx(params_m, rel=0.01)
    assert count_gflops(model, x) == pytest.approx(gflops, rel=0.01)


def test_architecture_facts():
    m = create_model("uniformer_s")
    assert m.patch_embed1.proj.kernel_size == (3, 4, 4) and m.patch_embed1.proj.stride == (2, 4, 4)
    assert m.patch_embed1.proj.padding == (1, 0, 0)
    assert m.patch_embed2.proj.kernel_size == (1, 2, 2)
    assert [len(b) for b in (m.blocks1, m.blocks2, m.blocks3, m.blocks4)] == [3, 4, 8, 3]
    assert m.blocks1[0].attn.weight.shape == (64, 1, 5, 5, 5)
    assert m.blocks3[0].attn.qkv.weight.shape == (960, 320)
    assert [b.attn.num_heads for b in (m.blocks3[0], m.blocks4[0])] == [5, 8]
    assert m.blocks3[0].norm1.eps == 1e-6


def test_num_frames_and_img_size_overrides():
    m = create_model("uniformer_tiny", num_frames=4, img_size=96, num_classes=3).eval()
    assert m(torch.randn(1, 3, 4, 96, 96)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("uniformer_tiny", img_size=100)
    with pytest.raises(ValueError, match="multiples of 32"):
        m(torch.randn(1, 3, 4, 80, 90))


def _official_3d_state(num_classes=6):
    torch.manual_seed(1)
    src = create_model("uniformer_tiny", num_classes=num_classes)
    for mod in src.modules():  # non-trivial BN statistics so that loading them matters
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return src.eval()


@pytest.mark.parametrize("container", ["model_state", "model", "bare"])
def test_load_official_3d_checkpoint(tmp_path, container):
    src = _official_3d_state()
    sd = src.state_dict()
    assert "blocks1.0.attn.weight" in sd and "patch_embed1.proj.weight" in sd and "norm.running_var" in sd
    path = tmp_path / "uniformer.pyth"
    torch.save(sd if container == "bare" else {container: sd, "epoch": 3}, path)
    dst = create_model("uniformer_tiny", num_classes=6, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), atol=0, rtol=0)


def test_head_of_another_size_is_dropped_with_warning(tmp_path):
    src = _official_3d_state(num_classes=400)
    path = tmp_path / "k400.pth"
    torch.save({"model_state": src.state_dict()}, path)
    with pytest.warns(UserWarning, match="head"):
        dst = create_model("uniformer_tiny", num_classes=6, pretrained=str(path)).eval()
    assert dst.head.weight.shape == (6, 128)
    # everything but the head came from the checkpoint
    with torch.no_grad():
        torch.testing.assert_close(
            dst.forward_features(torch.ones(1, 3, 8, 64, 64)), src.forward_features(torch.ones(1, 3, 8, 64, 64))
        )


def test_mismatch_is_an_error_naming_keys(tmp_path):
    sd = _official_3d_state().state_dict()
    sd["blocks3.0.attn.qkv.weight"] = torch.zeros(3, 3)
    sd.pop("blocks1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as e:
        create_model("uniformer_tiny", num_classes=6, pretrained=str(path))
    msg = str(e.value)
    assert "bad.pth" in msg and "blocks3.0.attn.qkv.weight" in msg and "blocks1.0.conv1.weight" in msg
    assert "extra.weight" in msg


def test_checkpoint_must_be_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": object.__new__(_Unsafe)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        create_model("uniformer_tiny", pretrained=str(path))


class _Unsafe:
    pass


def _to_2d(sd3d):
    """An official ImageNet (2D) state dict: same key names, 2D kernels, 1000-class head."""
    out = {}
    for k, v in sd3d.items():
        if v.ndim == 5:
            t = v.shape[2]
            v = v[:, :, t // 2] * (1.0 if t == 1 else 1.5)  # any 2D kernel
        out[k] = v.clone()
    out["head.weight"] = torch.randn(1000, out["head.weight"].shape[1])
    out["head.bias"] = torch.randn(1000)
    return out


def _reference_2d(sd, x):
    """An independent 2D UniFormer forward (uniformer_tiny layout) written with functional ops."""

    def ln(x, p):  # (B, C, H, W), channels-last LayerNorm
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], sd[p + ".weight"], sd[p + ".bias"]).permute(0, 3, 1, 2)

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    def conv(x, p, **kw):
        return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), **kw)

    def dw(x, p, pad):
        return conv(x, p, padding=pad, groups=x.shape[1])

    def local(x, p):
        x = x + dw(x, p + ".pos_embed", 1)
        x = x + conv(dw(conv(bn(x, p + ".norm1"), p + ".conv1"), p + ".attn", 2), p + ".conv2")
        return x + conv(F.gelu(conv(bn(x, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")

    def glob(x, p, heads):
        x = x + dw(x, p + ".pos_embed", 1)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        h = F.layer_norm(t, (C,), sd[p + ".norm1.weight"], sd[p + ".norm1.bias"], eps=1e-6)
        qkv = F.linear(h, sd[p + ".attn.qkv.weight"], sd[p + ".attn.qkv.bias"]).reshape(B, -1, 3, heads, C // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1) @ v
        t = t + F.linear(a.transpose(1, 2).reshape(B, -1, C), sd[p + ".attn.proj.weight"], sd[p + ".attn.proj.bias"])
        h = F.layer_norm(t, (C,), sd[p + ".norm2.weight"], sd[p + ".norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"])),
            sd[p + ".mlp.fc2.weight"],
            sd[p + ".mlp.fc2.bias"],
        )
        return (t + h).transpose(1, 2).reshape(B, C, H, W)

    x = ln(conv(x, "patch_embed1.proj", stride=4), "patch_embed1.norm")
    x = local(x, "blocks1.0")
    x = local(ln(conv(x, "patch_embed2.proj", stride=2), "patch_embed2.norm"), "blocks2.0")
    x = ln(conv(x, "patch_embed3.proj", stride=2), "patch_embed3.norm")
    x = glob(glob(x, "blocks3.0", 4), "blocks3.1", 4)
    x = glob(ln(conv(x, "patch_embed4.proj", stride=2), "patch_embed4.norm"), "blocks4.0", 4)
    return F.linear(bn(x, "norm").mean((2, 3)), sd["head.weight"], sd["head.bias"])


def test_2d_checkpoint_inflation_reproduces_the_image_model(tmp_path):
    sd2d = _to_2d(_official_3d_state().state_dict())
    path = tmp_path / "uniformer_tiny_in1k.pth"
    torch.save({"model": sd2d}, path)
    img = torch.randn(2, 3, 64, 64)
    expected = _reference_2d(sd2d, img)
    # centre inflation: a one-frame video is exactly the image model
    center = create_model("uniformer_tiny", num_classes=1000, pretrained=str(path), inflate="center").eval()
    with torch.no_grad():
        torch.testing.assert_close(center(img.unsqueeze(2)), expected, atol=1e-4, rtol=1e-4)
    # official (mean) inflation: kernels repeated over time and divided by T
    mean = create_model("uniformer_tiny", num_classes=1000, pretrained=str(path)).eval()
    w2d = sd2d["blocks1.0.attn.weight"]
    torch.testing.assert_close(mean.blocks1[0].attn.weight, w2d.unsqueeze(2).repeat(1, 1, 5, 1, 1) / 5)
    # on a static clip, frames away from the temporal border see the image response of the stem
    static = img.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    with torch.no_grad():
        stem = mean.patch_embed1.proj(static)  # (B, C, 4, 16, 16), output t=1..3 are interior
        ref = F.conv2d(img, sd2d["patch_embed1.proj.weight"], sd2d["patch_embed1.proj.bias"], stride=4)
    for t in range(1, stem.shape[2]):
        torch.testing.assert_close(stem[:, :, t], ref, atol=1e-5, rtol=1e-5)


def test_2d_checkpoint_head_dropped_for_other_classes(tmp_path):
    sd2d = _to_2d(_official_3d_state().state_dict())
    path = tmp_path / "in1k.pth"
    torch.save({"model": sd2d}, path)
    with pytest.warns(UserWarning, match="dropped"):
        m = create_model("uniformer_tiny", num_classes=8, pretrained=str(path))
    assert m.head.weight.shape == (8, 128)


def test_inflate_weight_modes():
    w = torch.randn(4, 2, 3, 3)
    mean = inflate_weight(w, 4, "mean")
    assert mean.shape == (4, 2, 4, 3, 3)
    torch.testing.assert_close(mean.sum(2), w)
    center = inflate_weight(w, 3, "center")
    torch.testing.assert_close(center[:, :, 1], w)
    assert center[:, :, 0].abs().sum() == 0 and center[:, :, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="inflate"):
        inflate_weight(w, 3, "sideways")


def test_fused_and_reference_attention_agree_in_model(monkeypatch):
    torch.manual_seed(0)
    m = create_model("uniformer_tiny", num_classes=4).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        monkeypatch.setenv("VIDEOREC_FUSED_ATTN", "1")
        fused = m(x)
        monkeypatch.setenv("VIDEOREC_FUSED_ATTN", "0")
        ref = m(x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = create_model("uniformer_tiny", num_classes=4).train()
    x = torch.randn(2, 3, 8, 64, 64)
    torch.manual_seed(1)
    m(x).sum().backward()
    g1 = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    torch.manual_seed(1)
    m(x).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, g1[n], atol=1e-5, rtol=1e-4, msg=n)
