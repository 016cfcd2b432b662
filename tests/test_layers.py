"""The shared attention core: fused SDPA versus the explicit softmax reference, masks included."""

import pytest
import torch

from videorec.models.layers import Attention, DropPath, attention, drop_path_rates, use_fused_attn


@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_fused_matches_reference(mask):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    k, v = k[:, :, :11], v[:, :, :11]
    attn_mask = None
    if mask == "float":
        attn_mask = torch.randn(2, 3, 17, 11)
    elif mask == "bool":
        attn_mask = torch.rand(17, 11) > 0.3
        attn_mask[:, 0] = True  # every query sees at least one key
    fused = attention(q, k, v, attn_mask=attn_mask, fused=True)
    ref = attention(q, k, v, attn_mask=attn_mask, fused=False)
    assert fused.shape == (2, 3, 17, 8)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_env_switch_forces_reference_path(monkeypatch):
    torch.manual_seed(0)
    layer = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 10, 32)
    monkeypatch.setenv("VIDEOREC_FUSED_ATTN", "1")
    assert use_fused_attn()
    fused = layer(x)
    monkeypatch.setenv("VIDEOREC_FUSED_ATTN", "0")
    assert not use_fused_attn()
    ref = layer(x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    layer = Attention(16, num_heads=2, attn_drop=0.5)
    x = torch.randn(1, 8, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(1000, 4)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean()
    assert 0.4 < kept < 0.6
    assert torch.allclose(y[y != 0], torch.tensor(2.0))


def test_drop_path_rates_linear():
    r = drop_path_rates(0.2, [2, 3])
    assert len(r) == 5 and r[0] == 0 and r[-1] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(r, r[1:], strict=False))
