"""The speed and optimisation switches, each on CPU with a tiny model: activation checkpointing, channels-last-3d,
gradient clipping, weight EMA, layer-wise learning-rate decay, throughput / MFU logging, global batch and lr scaling."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_config, synthetic_overrides
from lightning.pytorch.callbacks import EMAWeightAveraging, ThroughputMonitor
from omegaconf import open_dict

from videorec.lit import VideoClassifier
from videorec.lit.optim import layer_ids
from videorec.train import scale_batch_and_lr, train
from videorec.utils.profile import count_gflops

TINY = ["uniformer_tiny", "mvit_tiny", "twins_svt_tiny", "vvt_tiny", "xformer_tiny"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> list[str]:
    return [
        *synthetic_overrides(tmp_path_factory.mktemp("data") / "synthetic"),
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "logger=csv",
    ]


class GradNormProbe(L.Callback):
    """Records the gradient norm the optimiser stepped with (after clipping; gradients are zeroed at the next step)."""

    norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            GradNormProbe.norms.append(float(torch.stack(grads).norm()))


def _fit(tmp_path: Path, overrides: list[str]):
    cfg = compose_config("train", overrides, tmp_path)
    return cfg, train(cfg)


@pytest.mark.parametrize("name", TINY)
def test_activation_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    plain = VideoClassifier(model_name=name, backbone_kwargs={"drop_path_rate": 0.0})
    ckpt = VideoClassifier(model_name=name, backbone_kwargs={"drop_path_rate": 0.0}, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())

    def switched(m):
        return any(getattr(sub, "grad_checkpointing", False) for sub in m.backbone.modules())

    assert switched(ckpt) and not switched(plain)
    x = torch.randn(2, 3, 8, 64, 64)
    for m in (plain, ckpt):
        m.train()
        m(x).square().mean().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), n


def test_activation_checkpointing_switch_reaches_the_model(tmp_path, tiny_data):
    cfg = compose_config("train", [*tiny_data, "model.grad_checkpointing=true"], tmp_path)
    from videorec.train import build_module

    module = build_module(cfg, 8, None)
    assert module.hparams.grad_checkpointing and module.backbone.grad_checkpointing
    _, metrics = _fit(tmp_path / "run", [*tiny_data, "model.grad_checkpointing=true"])
    assert "val/acc1" in metrics


@pytest.mark.parametrize("name", ["uniformer_tiny", "xformer_tiny"])
def test_channels_last_matches_the_default_layout(name):
    plain = VideoClassifier(model_name=name).eval()
    fast = VideoClassifier(model_name=name, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    convs = [p for p in fast.parameters() if p.ndim == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain(x), fast(x), atol=1e-5)


def test_gradient_clipping_bounds_the_step(tmp_path, tiny_data):
    probe = ["+callbacks.probe._target_=test_switches.GradNormProbe"]
    GradNormProbe.norms = []
    _fit(tmp_path / "free", [*tiny_data, *probe])
    free = list(GradNormProbe.norms)
    GradNormProbe.norms = []
    _fit(tmp_path / "clipped", [*tiny_data, *probe, "trainer.gradient_clip_val=0.01"])
    clipped = list(GradNormProbe.norms)
    assert len(free) == len(clipped) == 3
    assert max(free) > 0.05 and max(clipped) <= 0.01 + 1e-6


def test_ema_of_the_weights(tmp_path, tiny_data):
    cfg = compose_config("train", [*tiny_data, "ema_decay=0.5"], tmp_path)
    from videorec.train import _switch_callbacks

    (ema,) = _switch_callbacks(cfg)
    assert isinstance(ema, EMAWeightAveraging)
    _, metrics = _fit(tmp_path / "run", [*tiny_data, "ema_decay=0.5"])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 3  # one update per step
    # the checkpoint's weights are the average (what eval and predict load); the raw ones are kept beside them
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point())
    assert "val/acc1" in metrics


def test_layer_decay_scales_the_learning_rate_by_depth():
    from videorec.lit.optim import apply_layer_decay, param_groups_weight_decay

    model = VideoClassifier(model_name="uniformer_tiny", lr=1e-3, layer_decay=0.5)
    groups = apply_layer_decay(model, param_groups_weight_decay(model, 0.05), 1e-3, 0.5)
    ids, depths = layer_ids(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            assert group["lr"] == pytest.approx(1e-3 * 0.5 ** (depths - 1 - ids[names[id(p)]]))
    head = next(g for g in groups if any(names[id(p)] == "backbone.head.weight" for p in g["params"]))
    embed = next(g for g in groups if any(names[id(p)].startswith("backbone.patch_embed1.") for p in g["params"]))
    assert head["lr"] == pytest.approx(1e-3) and embed["lr"] == pytest.approx(1e-3 * 0.5 ** (depths - 1))
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="layer_decay"):
        VideoClassifier(model_name="uniformer_tiny", layer_decay=1.5)


def test_layer_decay_reaches_the_optimiser(tmp_path, tiny_data):
    _fit(tmp_path / "run", [*tiny_data, "module.layer_decay=0.5"])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    lrs = sorted({g["lr_scale"] for g in ckpt["optimizer_states"][0]["param_groups"]})
    assert lrs[-1] == 1.0 and lrs[0] < 0.1 and len(lrs) > 3


def test_throughput_monitor_logs_flops_from_the_model(tmp_path, tiny_data):
    cfg = compose_config("train", [*tiny_data, "throughput=true"], tmp_path)
    from videorec.train import _switch_callbacks

    assert any(isinstance(c, ThroughputMonitor) for c in _switch_callbacks(cfg))
    module = VideoClassifier(model_name="uniformer_tiny", data_config={"num_frames": 8, "crop_size": 64})
    module._batch_clips = 4
    forward = count_gflops(module.backbone, torch.zeros(1, 3, 8, 64, 64)) * 2e9  # FLOPs of one clip's forward
    assert module.flops_per_batch == pytest.approx(4 * 3 * forward, rel=1e-6)  # forward + backward: 3 forwards
    _fit(tmp_path / "run", [*tiny_data, "throughput=true", "throughput_window=2", "trainer.limit_train_batches=4"])
    (metrics,) = (tmp_path / "run").glob("csv/**/metrics.csv")
    with open(metrics) as f:
        keys = set(next(csv.reader(f)))
    assert any(k.endswith("flops_per_sec") for k in keys) and any(k.endswith("samples_per_sec") for k in keys), keys


def test_global_batch_and_linear_lr_scaling(compose, tmp_path):
    cfg = compose(
        "train", ["data.batch_size=8", "global_batch_size=64", "base_lr=1e-3", "base_batch_size=32"], tmp_path
    )
    scaled = scale_batch_and_lr(cfg, world_size=4)
    assert scaled["per_device_batch_size"] * 4 * scaled["accumulate_grad_batches"] == 64
    assert scaled["per_device_batch_size"] <= 8 and scaled["accumulate_grad_batches"] == 2
    assert scaled["lr"] == pytest.approx(2e-3)
    one = scale_batch_and_lr(cfg, world_size=1)
    assert (one["per_device_batch_size"], one["accumulate_grad_batches"]) == (8, 8) and one["lr"] == scaled["lr"]
    with open_dict(cfg):
        cfg.global_batch_size = 60
    with pytest.raises(ValueError, match="global_batch_size=60"):
        scale_batch_and_lr(cfg, world_size=8)
    plain = scale_batch_and_lr(compose("train", ["data.batch_size=8"], tmp_path), world_size=2)
    assert plain["global_batch_size"] == 16 and plain["lr"] == compose("train", [], tmp_path).module.lr


def test_training_benchmark_script_runs_on_cpu(tmp_path):
    from conftest import load_script

    bench = load_script("bench_train")
    out = tmp_path / "bench.json"
    rows = bench.main(
        ["--device", "cpu", "--models", "uniformer_tiny", "--frames", "8", "--size", "64", "--batch", "2",
         "--steps", "1", "--warmup", "1", "--compile", "off", "--peak-tflops", "1", "--json", str(out)]
    )  # fmt: skip
    assert [(r["compile"], r["grad_checkpointing"]) for r in rows] == [(False, False), (False, True)]
    assert all(r["clips_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    forward = bench.forward_flops("uniformer_tiny", 8, 64)
    assert rows[0]["tflops_per_s"] == pytest.approx(3 * forward * rows[0]["clips_per_s"] / 1e12)
    assert out.is_file()


def test_pipeline_benchmark_names_the_bottleneck(tiny_synthetic_root):
    from conftest import load_script

    bench = load_script("bench_pipeline")
    result = bench.main(
        [f"data.root={tiny_synthetic_root}", "data.train_per_class=2", "data.val_per_class=1", "data.batch_size=4",
         "--model", "uniformer_tiny", "--workers", "0,1", "--batches", "3", "--steps", "1", "--warmup", "1",
         "--device", "cpu"]
    )  # fmt: skip
    assert [r["workers"] for r in result["loader"]] == [0, 1]
    assert all(r["clips_per_s"] > 0 for r in result["loader"]) and result["model_clips_per_s"] > 0
    best = max(r["clips_per_s"] for r in result["loader"])
    assert result["bottleneck"] == ("loader" if best < result["model_clips_per_s"] else "model")
    assert result["workers_needed"] >= 1
