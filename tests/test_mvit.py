"""MViT v1 / v2: published sizes, parity with torchvision and pytorchvideo, checkpoint formats, size overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from conftest import load_script

from videorec.models import CheckpointError, create_model, list_models, references
from videorec.models.mvit import MViT, MViTCfg, block_cfgs, model_cfgs, resize_rel_pos
from videorec.utils.profile import count_gflops, count_params

VARIANTS = ["mvit_b", "mvit_b_32x3", "mvitv2_s", "mvitv2_b", "mvit_tiny"]
# v1 structure on the tiny width: abs pos, no rel pos, expansion in the MLP, Q pooled only at stage starts
V1_TINY = dict(pool_q_every_block=False, expand_in_attn=False, rel_pos=False, abs_pos=True, residual_pool=False)


bench = load_script("bench_models")
convert = load_script("convert_checkpoint")


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb norms and biases too, so that a key mapped to the wrong place cannot hide behind an init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@contextlib.contextmanager
def _eval(*models):
    for m in models:
        m.eval()
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------------------------------------------------
# Published sizes (meta device: no memory, no compute)
# --------------------------------------------------------------------------------------------------------------------


def _meta(name: str, **kw) -> MViT:
    with torch.device("meta"):
        return create_model(name, **kw)


def _tv_meta(name: str):
    import torchvision.models.video.mvit as tv_mvit

    with torch.device("meta"):
        return getattr(tv_mvit, name)()


@pytest.mark.parametrize(
    ("name", "params_m"), [("mvit_b", 36.6), ("mvit_b_32x3", 36.6), ("mvitv2_s", 34.5), ("mvitv2_b", 51.2)]
)
def test_param_counts_match_published(name, params_m):
    n = count_params(_meta(name))
    assert abs(n / 1e6 - params_m) / params_m < 0.01, n


@pytest.mark.parametrize(("name", "tv_name"), [("mvit_b", "mvit_v1_b"), ("mvitv2_s", "mvit_v2_s")])
def test_param_counts_equal_torchvision(name, tv_name):
    assert count_params(_meta(name)) == count_params(_tv_meta(tv_name))


@pytest.mark.parametrize(
    ("name", "frames", "gflops"),
    [("mvit_b", 16, 70.6), ("mvit_b_32x3", 32, 170.0), ("mvitv2_s", 16, 64.2), ("mvitv2_b", 32, 225.0)],
)
def test_gflops_match_published(name, frames, gflops):
    model = _meta(name)
    assert model.num_frames == frames and model.img_size == (224, 224)
    got = count_gflops(model, torch.empty(1, 3, frames, 224, 224, device="meta"))
    assert abs(got - gflops) / gflops < 0.01, got


@pytest.mark.parametrize(("name", "tv_name"), [("mvit_b", "mvit_v1_b"), ("mvitv2_s", "mvit_v2_s")])
def test_gflops_equal_torchvision(name, tv_name):
    x = torch.empty(1, 3, 16, 224, 224, device="meta")
    ours, ref = count_gflops(_meta(name), x), count_gflops(_tv_meta(tv_name), x)
    assert abs(ours - ref) / ref < 1e-3, (ours, ref)


def test_block_structure_mvit_b():
    """Stage starts 1, 3, 14: dims 96 -> 192 -> 384 -> 768, heads 1 -> 2 -> 4 -> 8, adaptive K/V strides."""
    cfgs = block_cfgs(model_cfgs["mvit_b"].cfg)
    assert len(cfgs) == 16
    assert [c.num_heads for c in cfgs] == [1, 2, 2, 4] + [4] * 10 + [8, 8]
    assert [c.dim_out for c in cfgs] == [192, 192, 384] + [384] * 10 + [768] * 3  # v1 expands in the MLP
    assert [i for i, c in enumerate(cfgs) if c.stride_q == (1, 2, 2)] == [1, 3, 14]
    kv = [c.stride_kv for c in cfgs]
    assert kv[0] == (1, 8, 8) and kv[1] == kv[2] == (1, 4, 4) and kv[3] == kv[13] == (1, 2, 2)
    assert kv[14] == kv[15] == (1, 1, 1)
    v2 = block_cfgs(model_cfgs["mvitv2_b"].cfg)
    assert len(v2) == 24 and [i for i, c in enumerate(v2) if c.stride_q == (1, 2, 2)] == [2, 5, 21]
    assert all(c.attn_dim == c.dim_out for c in v2) and v2[2].dim == 96 and v2[2].dim_out == 192


def test_registry_and_configs(compose, tmp_path):
    assert set(VARIANTS) <= set(list_models("mvit*"))
    for name in VARIANTS:
        cfg = compose("train", [f"model={name}"], tmp_path).model
        assert cfg.name == name and cfg.pretrained is None
        model = _meta(name, **cfg.kwargs)
        assert isinstance(model, MViT)


# --------------------------------------------------------------------------------------------------------------------
# Parity with reference implementations
# --------------------------------------------------------------------------------------------------------------------

T, S = 4, 64  # small input for speed; the full-width published architectures


@pytest.mark.parametrize(("name", "tv_name"), [("mvit_b", "mvit_v1_b"), ("mvitv2_s", "mvit_v2_s")])
def test_parity_torchvision(tmp_path, name, tv_name):
    torch.manual_seed(0)
    ref = _randomise(references.torchvision_mvit(tv_name)(T, S, 10))
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    model = create_model(name, num_classes=10, num_frames=T, img_size=S, pretrained=path)
    x = torch.randn(2, 3, T, S, S)
    with _eval(ref, model):
        diff = (ref(x) - model(x)).abs().max().item()
    assert diff < 1e-4, diff


def test_parity_pytorchvideo(tmp_path):
    torch.manual_seed(0)
    ref = _randomise(references.pytorchvideo_mvit_b(T, S, 10))
    path = tmp_path / "MVIT_B_16x4.pyth"
    torch.save({"model_state": ref.state_dict(), "epoch": 200}, path)  # the .pyth container of the hub checkpoints
    # pytorchvideo's pooling LayerNorms use eps 1e-5 (torchvision and PySlowFast v2: 1e-6): the format implies it, the
    # user passes nothing
    model = create_model("mvit_b", num_classes=10, num_frames=T, img_size=S, pretrained=path)
    x = torch.randn(2, 3, T, S, S)
    with _eval(ref, model):
        diff = (ref(x) - model(x)).abs().max().item()
    assert diff < 1e-4, diff
    assert model.blocks[1].attn.norm_q.eps == 1e-5 and model.norm.eps == 1e-6  # only the pooling norms
    # an explicit override still wins
    mine = create_model("mvit_b", num_classes=10, num_frames=T, img_size=S, pool_norm_eps=1e-6, pretrained=path)
    assert mine.blocks[1].attn.norm_q.eps == 1e-6
    from videorec.models.checkpoints import load_pretrained

    report = load_pretrained(create_model("mvit_b", num_classes=10, num_frames=T, img_size=S), path)
    assert report.settings == {"pool_norm_eps": 1e-5} and "pool_norm_eps=1e-05" in report.summary()


def _to_slowfast(state_dict: dict, separate_qkv: bool) -> dict:
    """Our names -> PySlowFast MViT names (``head.projection``; the v1 code of 2021 had separate q / k / v)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            key = "head.projection." + key[len("head.") :]
        if separate_qkv and ".attn.qkv." in key:
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[key.replace(".qkv.", f".{part}.")] = chunk.clone()
            continue
        out[key] = value
    return out


@pytest.mark.parametrize(("overrides", "separate_qkv"), [(V1_TINY, True), ({}, False)])
def test_slowfast_checkpoint(tmp_path, overrides, separate_qkv):
    """Separate q / k / v is the PySlowFast code of 2021, whose pooling LayerNorms have eps 1e-5: the format says so."""
    eps = 1e-5 if separate_qkv else 1e-6
    src = _randomise(create_model("mvit_tiny", pool_norm_eps=eps, **overrides))
    path = tmp_path / "slowfast.pyth"
    torch.save({"model_state": _to_slowfast(src.state_dict(), separate_qkv), "epoch": 1}, path)
    model = create_model("mvit_tiny", pretrained=path, **overrides)
    assert model.blocks[1].attn.norm_q.eps == eps
    x = torch.randn(2, 3, 8, 64, 64)
    with _eval(src, model):
        torch.testing.assert_close(model(x), src(x))


def test_foreign_keys_named_in_error(tmp_path):
    sd = create_model("mvit_tiny").state_dict()
    sd["blocks.0.attn.extra.weight"] = torch.zeros(3)
    del sd["blocks.1.norm1.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.norm1\.weight[\s\S]*blocks\.0\.attn\.extra\.weight"):
        create_model("mvit_tiny", pretrained=tmp_path / "bad.pth")


def test_other_head_size_dropped_with_warning(tmp_path):
    torch.save(create_model("mvit_tiny", num_classes=5).state_dict(), tmp_path / "h5.pth")
    with pytest.warns(UserWarning, match="head"):
        model = create_model("mvit_tiny", num_classes=7, pretrained=tmp_path / "h5.pth")
    assert model.head.out_features == 7


# --------------------------------------------------------------------------------------------------------------------
# Attention core: fused vs reference
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, V1_TINY], ids=["v2_relpos", "v1"])
def test_fused_matches_reference_attention(monkeypatch, overrides):
    torch.manual_seed(0)
    model = _randomise(create_model("mvit_tiny", **overrides)).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        fused = model(x)
        monkeypatch.setenv("VIDEOREC_FUSED_ATTN", "0")
        ref_env = model(x)
        monkeypatch.delenv("VIDEOREC_FUSED_ATTN")
        for blk in model.blocks:
            blk.attn.fused_attn = False
        ref_attr = model(x)
    torch.testing.assert_close(fused, ref_env, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, ref_attr, atol=1e-5, rtol=1e-5)
    assert model.blocks[0].attn.rel_pos == ("rel_pos" not in overrides)


def test_rel_pos_bias_changes_output():
    """The relative bias really reaches SDPA: zeroing the tables changes the logits."""
    torch.manual_seed(0)
    model = _randomise(create_model("mvit_tiny")).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        before = model(x)
        for blk in model.blocks:
            for t in (blk.attn.rel_pos_t, blk.attn.rel_pos_h, blk.attn.rel_pos_w):
                t.zero_()
        after = model(x)
    assert (before - after).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Input sizes: building and loading at other sizes
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, V1_TINY], ids=["v2", "v1"])
def test_size_overrides_build_and_run(overrides):
    small = create_model("mvit_tiny", num_frames=8, img_size=64, **overrides)
    big = create_model("mvit_tiny", num_frames=4, img_size=96, drop_path_rate=0.1, num_classes=3, **overrides)
    assert big.patch_grid == (2, 24, 24) and small.patch_grid == (4, 16, 16)
    if overrides:  # v1: absolute embeddings sized by the grid
        assert big.pos_embed_spatial.shape == (1, 24 * 24, 32) and big.pos_embed_temporal.shape == (1, 2, 32)
    else:  # v2: relative tables sized by the grid
        assert big.blocks[0].attn.rel_pos_t.shape[0] == 3 and small.blocks[0].attn.rel_pos_t.shape[0] == 7
        assert big.blocks[0].attn.rel_pos_h.shape[0] > small.blocks[0].attn.rel_pos_h.shape[0]
    assert big.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    out = big.eval()(torch.randn(2, 3, 4, 96, 96))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("overrides", [{}, V1_TINY], ids=["v2", "v1"])
def test_checkpoint_from_other_size(tmp_path, overrides):
    """Tables trained at 8x64x64 are resampled into a 4x96x96 model; a same-size load stays exact."""
    src = create_model("mvit_tiny", **overrides)
    with torch.no_grad():  # smooth tables: a ramp along the offset / position axis
        for name, p in src.named_parameters():
            if "rel_pos_" in name:
                p.copy_(torch.linspace(-1, 1, p.shape[0])[:, None].expand_as(p))
        if overrides:
            src.pos_embed_temporal.copy_(torch.linspace(0, 1, 4)[None, :, None].expand_as(src.pos_embed_temporal))
            grid = torch.linspace(0, 1, 16)
            ramp = (grid[:, None] + 2 * grid[None, :]).reshape(1, 256, 1)  # h + 2 w
            src.pos_embed_spatial.copy_(ramp.expand_as(src.pos_embed_spatial))
    torch.save(src.state_dict(), tmp_path / "src.pth")

    same = create_model("mvit_tiny", pretrained=tmp_path / "src.pth", **overrides)
    x = torch.randn(1, 3, 8, 64, 64)
    with _eval(src, same):
        torch.testing.assert_close(same(x), src(x))

    big = create_model("mvit_tiny", num_frames=4, img_size=96, pretrained=tmp_path / "src.pth", **overrides)
    sd = big.state_dict()
    for name, value in sd.items():
        if "rel_pos_" in name:
            assert value.shape == big.state_dict()[name].shape
            col = value[:, 0]  # a ramp stays a ramp: increasing, symmetric, zero at offset 0
            assert torch.all(col[1:] > col[:-1]) and col.abs().max() <= 1 + 1e-6
            torch.testing.assert_close(col, -col.flip(0))
            assert col[len(col) // 2].abs() < 1e-5
    if overrides:
        temporal = sd["pos_embed_temporal"][0, :, 0]
        assert temporal.shape == (2,) and 0 <= temporal[0] < temporal[1] <= 1
        spatial = sd["pos_embed_spatial"][0, :, 0].reshape(24, 24)
        assert torch.all(spatial[1:] >= spatial[:-1] - 1e-4) and torch.all(spatial[:, 1:] >= spatial[:, :-1] - 1e-4)
        # h + 2 w: moving along w grows twice as fast as along h
        assert (spatial[0, -1] - spatial[0, 0]) / (spatial[-1, 0] - spatial[0, 0]) == pytest.approx(2, rel=0.05)
    out = big.eval()(torch.randn(1, 3, 4, 96, 96))
    assert torch.isfinite(out).all()


def test_resize_rel_pos_is_linear_resampling():
    table = torch.stack([torch.linspace(0, 6, 7), torch.linspace(6, 0, 7)], dim=1)  # (7, 2)
    out = resize_rel_pos(table, 13)
    assert out.shape == (13, 2)
    assert torch.allclose(out[:, 0] + out[:, 1], torch.full((13,), 6.0), atol=1e-5)  # linear in, linear out
    assert resize_rel_pos(table, 7) is table


def test_image_batch_is_one_frame_video():
    """A (B, C, H, W) batch runs as T=1 (absolute and relative positions resampled at run time)."""
    for overrides in ({}, V1_TINY):
        model = create_model("mvit_tiny", **overrides).eval()
        img = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(img), model(img.unsqueeze(2)))
        assert model(img).shape == (2, 8)


def test_other_input_size_at_run_time_v1():
    model = create_model("mvit_tiny", **V1_TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4, 96, 80))
    assert out.shape == (1, 8) and torch.isfinite(out).all()


def test_clear_errors():
    with pytest.raises(ValueError, match="MViT: num_frames and img_size must be positive"):
        create_model("mvit_tiny", num_frames=0)
    with pytest.raises(ValueError, match="MViT.*stage_starts"):
        create_model("mvit_tiny", stage_starts=(1, 9))
    with pytest.raises(TypeError, match="mvit_tiny: unknown override"):
        create_model("mvit_tiny", window_size=7)


def test_model_takes_its_config_dataclass():
    """``MViT(cfg, ...)`` builds the variant; overrides naming a config field replace it (lists become tuples)."""
    cfg = model_cfgs["mvit_tiny"].cfg
    torch.manual_seed(0)
    direct = MViT(cfg, num_classes=8, num_frames=8, img_size=64, head_drop=0.0, global_pool="avg")
    torch.manual_seed(0)
    registered = create_model("mvit_tiny")
    assert direct.cfg == registered.cfg == cfg
    sd = registered.state_dict()
    assert list(direct.state_dict()) == list(sd)
    assert all(torch.equal(v, sd[k]) for k, v in direct.state_dict().items())
    model = create_model("mvit_tiny", kv_stride=[1, 2, 2], stage_starts=[1, 2], num_frames=4)
    assert model.cfg == dataclasses.replace(cfg, kv_stride=(1, 2, 2), stage_starts=(1, 2))
    assert model.num_frames == 4 and model.variant_args["kv_stride"] == (1, 4, 4)  # the variant's, as registered
    assert MViTCfg(q_stride=2).q_stride == (2, 2, 2)
    with pytest.raises(TypeError, match=r"mvit_tiny: unknown override\(s\) \['cfg'\]"):
        create_model("mvit_tiny", cfg=cfg)


# --------------------------------------------------------------------------------------------------------------------
# Uniform API and training behaviour
# --------------------------------------------------------------------------------------------------------------------


def test_api():
    model = create_model("mvit_tiny", num_classes=5)
    x = torch.randn(2, 3, 8, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + math.prod(model.feature_grid), model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model.get_classifier() is model.head
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert nwd <= set(names) and "cls_token" in nwd and any("rel_pos_t" in n for n in nwd)
    assert not any("qkv" in n for n in nwd)
    assert "pos_embed_spatial" in create_model("mvit_tiny", **V1_TINY).no_weight_decay()
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_train_step_and_grad_checkpointing():
    torch.manual_seed(0)
    model = create_model("mvit_tiny", drop_path_rate=0.0, head_drop=0.0)
    x = torch.randn(2, 3, 8, 64, 64)
    model.train()
    model(x).logsumexp(-1).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count_params(model)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)


def test_drop_path_only_in_training():
    model = create_model("mvit_tiny", drop_path_rate=0.5)
    x = torch.randn(4, 3, 8, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(1)
    c = model(x)
    torch.manual_seed(2)
    d = model(x)
    assert not torch.allclose(c, d)


def test_bf16_autocast_runs():
    model = create_model("mvit_tiny").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 8, 64, 64))
    assert torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------------------------------------------------


def test_convert_checkpoint_torchvision(tmp_path, capsys):
    torch.manual_seed(0)
    ref = _randomise(references.torchvision_mvit("mvit_v2_s")(T, S, 10))
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    dst = tmp_path / "ours.pth"
    report = convert.main(
        [
            "mvitv2_s",
            str(tmp_path / "tv.pth"),
            str(dst),
            "--num-classes",
            "10",
            "--num-frames",
            str(T),
            "--img-size",
            "64",
        ]
    )
    assert "torchvision-mvit" in report.format and "torchvision-mvit" in capsys.readouterr().out
    sd = torch.load(dst, weights_only=True)
    model = create_model("mvitv2_s", num_classes=10, num_frames=T, img_size=S)
    model.load_state_dict(sd)  # strict: our own names, nothing missing
    x = torch.randn(1, 3, T, S, S)
    with _eval(ref, model):
        assert (ref(x) - model(x)).abs().max() < 1e-4


def test_bench_references_match_our_architectures():
    """Every reference builder registered for an MViT variant builds the same architecture size as ours."""
    for name in ("mvit_b", "mvitv2_s"):
        for label, build in references.REFERENCES[name].items():
            try:
                with torch.device("meta"):
                    ref = build(8, 112, 400)
            except RuntimeError:  # pytorchvideo's builder reads tensor values (.item()): build it for real
                ref = build(8, 112, 400)
            ours = _meta(name, num_frames=8, img_size=112)
            assert count_params(ref) == count_params(ours), label


def test_bench_script_runs(tmp_path, capsys):
    rows = bench.main(
        ["--models", "mvit_tiny", "--iters", "1", "--warmup", "0", "--frames", "4", "--size", "32", "--json",
         str(tmp_path / "b.json")]
    )  # fmt: skip
    assert len(rows) == 1 and rows[0]["fwd_ms"] > 0 and rows[0]["fwd_bwd_ms"] > 0 and rows[0]["peak_mem_mb"] > 0
    assert rows[0]["gflops"] > 0 and (tmp_path / "b.json").exists()
    assert "mvit_tiny" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "tv_name"), [("mvit_b", "mvit_v1_b"), ("mvitv2_s", "mvit_v2_s")])
def test_parity_torchvision_published_size(tmp_path, name, tv_name):
    import torchvision.models.video.mvit as tv_mvit

    torch.manual_seed(0)
    ref = _randomise(getattr(tv_mvit, tv_name)())
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    model = create_model(name, pretrained=tmp_path / "tv.pth")
    x = torch.randn(1, 3, 16, 224, 224)
    with _eval(ref, model):
        assert (ref(x) - model(x)).abs().max() < 1e-4


def test_convert_checkpoint_lightning(tmp_path):
    from videorec.lit import VideoClassifier

    src = _randomise(create_model("mvit_tiny", **V1_TINY))
    sd = _to_slowfast(src.state_dict(), separate_qkv=True)
    torch.save({"model_state": sd}, tmp_path / "sf.pyth")
    # the V1 structure is not a registered variant: convert into mvit_tiny's v2 structure fails, naming keys
    with pytest.raises(CheckpointError, match="pos_embed_spatial"):
        convert.main(["mvit_tiny", str(tmp_path / "sf.pyth"), str(tmp_path / "x.ckpt")])
    # a registered v2 variant round-trips through PySlowFast names into a Lightning checkpoint
    src = _randomise(create_model("mvit_tiny"))
    torch.save({"model_state": _to_slowfast(src.state_dict(), separate_qkv=False)}, tmp_path / "sf2.pyth")
    report = convert.main(["mvit_tiny", str(tmp_path / "sf2.pyth"), str(tmp_path / "out.ckpt"), "--lightning"])
    assert report.format.startswith("slowfast-mvit")
    lit = VideoClassifier.load_from_checkpoint(tmp_path / "out.ckpt")
    x = torch.randn(1, 3, 8, 64, 64)
    with _eval(src, lit):
        torch.testing.assert_close(lit(x), src(x))
