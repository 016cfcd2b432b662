"""Vicinity ViT: published sizes, the linear vicinity attention against an explicit N x N reference, image mode."""

import math

import pytest
import torch

from videorec.models import create_model, load_pretrained
from videorec.models.vvt import VicinityAttention, vicinity_features, vicinity_linear_attention
from videorec.utils.profile import count_params

# Parameters of the official image models (OpenNLPLab/Vicinity-Vision-Transformer, classification/vvt.py, vvt_tiny
# and vvt_small with 1000 classes), counted by building them: the paper rounds them to 12.9M and 25.5M.
OFFICIAL_PARAMS = {"vvt_t": 12_882_440, "vvt_s": 25_492_264}


@pytest.mark.parametrize(("name", "published"), [("vvt_t", 12.9e6), ("vvt_s", 25.5e6)])
def test_image_params_match_published(name, published):
    with torch.device("meta"):  # sizes only: skip allocating and initialising the weights
        image = create_model(name, num_classes=1000, num_frames=1, img_size=224)
        video = create_model(name, num_classes=1000)  # 3x3x3 depthwise / (3, 7, 7) stem: a little larger
    assert count_params(image) == OFFICIAL_PARAMS[name]  # exactly the official code's count
    assert abs(count_params(image) - published) / published < 0.005
    # the video model's kernels have temporal taps: 13.10M / 25.95M, 1.7% / 1.8% above the image model
    assert count_params(image) < count_params(video) < 1.02 * count_params(image)


def _quadratic_reference(q, k, v, grid, decomposition, eps=1e-4):
    """Explicit vicinity attention: A_ij = relu(q_i).relu(k_j) * decay(i, j), rows normalised by their sum."""
    idx = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).reshape(-1, 3)
    axes = [a for a, n in enumerate(grid) if n > 1]
    theta = [(math.pi / 2) * idx[:, a].double() / grid[a] for a in axes]
    diffs = [th[:, None] - th[None, :] for th in theta]  # (N, N) per axis
    if not diffs:
        decay = torch.ones(idx.shape[0], idx.shape[0], dtype=torch.float64)
    elif decomposition == "sum":
        decay = sum(d.cos() for d in diffs)
    else:
        decay = math.prod(d.cos() for d in diffs)
    sim = q.double().relu() @ k.double().relu().transpose(-2, -1) * decay  # (B, h, N, N)
    return (sim @ v.double()) / (sim.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("decomposition", ["sum", "product"])
@pytest.mark.parametrize("grid", [(3, 4, 5), (1, 4, 6), (2, 1, 7), (1, 1, 1)])
def test_linear_attention_equals_quadratic_reference(decomposition, grid):
    torch.manual_seed(0)
    n = math.prod(grid)
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    out = vicinity_linear_attention(q, k, v, grid, decomposition)
    ref = _quadratic_reference(q, k, v, grid, decomposition)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("decomposition", "groups"), [("sum", 6), ("product", 8)])
def test_feature_groups_in_3d(decomposition, groups):
    x = torch.rand(1, 1, 2 * 3 * 4, 5)
    assert vicinity_features(x, (2, 3, 4), decomposition).shape[-1] == groups * 5
    # a singleton time axis leaves exactly the 2D decomposition (4 groups either way)
    assert vicinity_features(x, (1, 4, 6), decomposition).shape[-1] == 4 * 5


def test_vicinity_decay_prefers_near_tokens():
    """With identical queries/keys, a token attends more to its neighbour than to a far token."""
    grid = (4, 6, 6)
    n = math.prod(grid)
    q = k = torch.ones(1, 1, n, 4)
    v = torch.eye(n).view(1, 1, n, n)  # output row i = attention weights of token i
    weights = vicinity_linear_attention(q, k, v, grid)[0, 0]
    # token (0, 0, 0): neighbour (0, 0, 1) vs far corner (3, 5, 5)
    assert weights[0, 1] > weights[0, n - 1] * 1.5
    torch.testing.assert_close(weights.sum(-1), torch.ones(n), rtol=1e-3, atol=1e-3)


def test_feature_reduction_and_fp_connection():
    attn = VicinityAttention(64, num_heads=2)
    assert attn.q.out_features == attn.k.out_features == attn.v.out_features == 32
    assert attn.proj.in_features == 32 and attn.proj.out_features == 64
    x = torch.randn(2, 2 * 4 * 4, 64)
    y = attn(x, (2, 4, 4))
    assert y.shape == x.shape
    # the feature preserving gate depends on the input: with zero gate weights the output is y + y / 2
    with torch.no_grad():
        attn.fp.fc2.weight.zero_()
        base = attn.proj(vicinity_linear_attention(*_qkv(attn, x), (2, 4, 4)).transpose(1, 2).reshape(2, 32, 32))
    torch.testing.assert_close(attn(x, (2, 4, 4)), 1.5 * base)


def _qkv(attn, x):
    B, N, _ = x.shape
    return [p(x).view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2) for p in (attn.q, attn.k, attn.v)]


def test_image_model_weights_give_the_same_output_on_one_frame(tmp_path):
    torch.manual_seed(0)
    image = create_model("vvt_tiny", num_classes=5, num_frames=1).eval()
    kernels = [m.weight.shape[2] for m in image.modules() if isinstance(m, torch.nn.Conv3d)]
    assert set(kernels) == {1}, "num_frames=1 must build 2D (one-tap) kernels"
    path = tmp_path / "vvt_image.pth"
    torch.save(image.state_dict(), path)
    video = create_model("vvt_tiny", num_classes=5).eval()
    report = load_pretrained(video, path)
    assert report.format == "vvt-image" and report.inflated
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(video(img), image(img), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(video(img), video(img.unsqueeze(2)))
        # on a real clip the video model does use time
        clip = torch.randn(2, 3, 8, 64, 64)
        assert not torch.allclose(video(clip), video(clip[:, :, :1].expand_as(clip)))


@pytest.mark.parametrize(("frames", "size"), [(1, 32), (3, 48), (8, 64), (5, 72)])
def test_any_grid_runs(frames, size):
    model = create_model("vvt_tiny", num_classes=4, img_size=size, num_frames=max(frames, 2)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, frames, size, size))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


def test_bad_overrides_fail_clearly():
    with pytest.raises(ValueError, match="VVT: img_size"):
        create_model("vvt_tiny", img_size=16)
    with pytest.raises(ValueError, match="VVT: num_frames"):
        create_model("vvt_tiny", num_frames=0)
    with pytest.raises(ValueError, match="decomposition"):
        create_model("vvt_tiny", decomposition="max")
    with pytest.raises(ValueError, match="not divisible"):
        create_model("vvt_tiny", num_heads=(3, 1, 1, 1))


def test_product_decomposition_variant_trains():
    torch.manual_seed(0)
    model = create_model("vvt_tiny", num_classes=3, decomposition="product", num_frames=2)
    out = model(torch.randn(2, 3, 2, 32, 32))
    out.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = create_model("vvt_tiny", num_classes=3, drop_path_rate=0.0).train()
    x = torch.randn(1, 3, 2, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), ref)


def test_no_softmax_attention_is_used(monkeypatch):
    """VVT's attention is linear: the shared softmax core is never called."""
    import videorec.models.layers as layers

    calls = []
    monkeypatch.setattr(layers, "attention", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1))
    create_model("vvt_tiny", num_classes=3)(torch.randn(1, 3, 2, 32, 32))
    assert not calls
