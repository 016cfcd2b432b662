"""The shared layers: the attention core (fused SDPA versus the explicit softmax reference, masks included), DropPath,
the MLP and the block runner with activation checkpointing."""

import pytest
import torch

from videorec.models.layers import (
    Attention,
    DropPath,
    Mlp,
    attention,
    checkpoint_seq,
    drop_path_rates,
    use_fused_attn,
)


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


def test_conv_mlp_is_the_linear_mlp_per_position():
    torch.manual_seed(0)
    linear, conv = Mlp(8, 16, 4), Mlp(8, 16, 4, use_conv=True)
    assert list(conv.state_dict()) == list(linear.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert isinstance(conv.fc1, torch.nn.Conv3d) and conv.fc1.kernel_size == (1, 1, 1)
    conv.load_state_dict(
        {k: v.reshape(*v.shape, 1, 1, 1) if v.ndim == 2 else v for k, v in linear.state_dict().items()}
    )
    x = torch.randn(2, 8, 3, 4, 5)  # (B, C, T, H, W)
    torch.testing.assert_close(conv(x), linear(x.movedim(1, -1)).movedim(-1, 1), atol=1e-6, rtol=1e-5)


class _Shift(torch.nn.Module):
    """A block that takes an extra argument and, with ``carry``, returns a changed one for the next block."""

    def __init__(self, carry: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.carry = carry

    def forward(self, x, scale):
        y = self.lin(x).tanh() * scale
        return (y, scale + 1) if self.carry else y


@pytest.mark.parametrize("carry", [False, True])
def test_checkpoint_seq_gives_the_same_result_and_gradients(carry):
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(_Shift(carry) for _ in range(3))
    x = torch.randn(2, 4)
    outs, grads = [], []
    for enabled in (False, True):
        blocks.zero_grad()
        out = checkpoint_seq(blocks, x, 2.0, enabled=enabled, carry=carry)
        y = out[0] if carry else out
        if carry:
            assert out[1] == 5.0  # 2 + 1 per block
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in blocks.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
