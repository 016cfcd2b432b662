"""The entry points end to end on the embedded dataset: real H.264 mp4 files decoded by decord."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config, synthetic_overrides

from videorec.data.synthetic import CLASSES
from videorec.eval import evaluate
from videorec.models import UnknownModelError
from videorec.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> list[str]:
    """Overrides pointing at a small generated copy of the embedded dataset (2 train + 1 val video a class)."""
    return synthetic_overrides(tmp_path_factory.mktemp("data") / "synthetic")


def _run(tmp_path, overrides, config="train"):
    cfg = compose_config(config, overrides, tmp_path)
    return cfg, (train(cfg) if config == "train" else evaluate(cfg))


def test_fast_dev_run_train_then_eval(tmp_path, tiny_synthetic):
    run_dir = tmp_path / "run"
    cfg, metrics = _run(run_dir, [*tiny_synthetic, "logger=none", "trainer.fast_dev_run=true"])
    assert {"val/acc1", "val/acc5", "val/loss", "train/acc1"} <= set(metrics)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["val/acc1"] == pytest.approx(metrics["val/acc1"])
    assert (run_dir / "config.yaml").is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_synthetic):
    """One short training run (1 epoch, then multi-view test) shared by the eval and predict tests."""
    run_dir = tmp_path_factory.mktemp("trained")
    overrides = [
        *tiny_synthetic,
        "logger=csv",
        "trainer.max_epochs=1",
        "test=true",
        "data.eval_clips=2",
        "data.eval_crops=1",
    ]
    _, metrics = _run(run_dir, overrides)
    return run_dir, metrics


def test_train_writes_checkpoint_then_eval_reports_clip_and_video_metrics(tmp_path, trained):
    run_dir, metrics = trained
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts) and len(ckpts) == 2
    assert metrics["test/num_videos"] == 8 and metrics["test/num_clips"] == 16
    assert (run_dir / "csv" / "metrics.csv").is_file()
    # evaluation from the checkpoint alone: the data config is taken from it
    eval_dir = tmp_path / "eval"
    _, result = _run(eval_dir, [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer=cpu"], config="eval")
    saved = json.loads((eval_dir / "eval.json").read_text())
    for key in ("clip_acc1", "clip_acc5", "video_acc1", "video_acc5", "num_videos", "num_clips"):
        assert saved[key] == pytest.approx(result[key])
    assert saved["num_videos"] == 8 and saved["num_clips"] == 16  # the data config stored in the checkpoint
    rows = (eval_dir / "predictions.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("video_index,path,label")
    assert "videos/val/" in rows[1]
    # per class: support, accuracy, most-confused class; their mean is mean_class_acc
    import csv

    with open(eval_dir / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [r["name"] for r in per_class] == list(CLASSES) and all(r["support"] == "1" for r in per_class)
    accuracies = [float(r["accuracy"]) for r in per_class]
    assert saved["mean_class_acc"] == pytest.approx(sum(accuracies) / len(accuracies))
    assert saved["mean_class_acc"] == pytest.approx(saved["video_acc1"])  # one video a class
    for row in per_class:  # a wrong video names the class it was taken for
        assert (row["most_confused_with"] == "") == (float(row["accuracy"]) == 1.0)
    assert saved["videos_per_s"] > 0 and saved["views_per_s"] == pytest.approx(2 * saved["videos_per_s"])
    assert saved["skipped_videos"] == 0 and saved["skipped"] == [] and saved["ensemble"] == "mean"


def test_eval_max_ensemble_and_val_split(tmp_path, trained):
    import torch

    from videorec.lit import aggregate_views

    run_dir, _ = trained
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    _, mean = _run(tmp_path / "mean", [ckpt, "trainer=cpu", "split=val"], config="eval")
    _, best = _run(tmp_path / "max", [ckpt, "trainer=cpu", "split=val", "ensemble=max"], config="eval")
    assert mean["split"] == best["split"] == "val" and best["ensemble"] == "max"
    assert mean["clip_acc1"] == best["clip_acc1"] and mean["num_clips"] == best["num_clips"]
    # max over views, on views made up here: video 0's second view is sure of class 1, its mean still says 0
    probs = torch.tensor([[0.6, 0.1, 0.3], [0.35, 0.65, 0.0], [0.2, 0.2, 0.6]])
    views = dict(
        probs=probs, label=torch.tensor([1, 1, 2]), video_index=torch.tensor([0, 0, 1]),
        clip_index=torch.tensor([0, 1, 0]), crop_index=torch.zeros(3, dtype=torch.long),
    )  # fmt: skip
    assert aggregate_views(**views)["video_acc1"] == 0.5
    combined = aggregate_views(**views, ensemble="max")
    assert combined["video_acc1"] == 1.0 and torch.allclose(
        combined["videos"]["probs"][0], torch.tensor([0.6, 0.65, 0.3])
    )
    with pytest.raises(ValueError, match="ensemble"):
        aggregate_views(**views, ensemble="median")


def test_wandb_offline_run_leaves_its_folder_with_metrics(tmp_path, tiny_synthetic, monkeypatch):
    from wandb_records import config_keys, history

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    overrides = [*tiny_synthetic, "logger=wandb", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
    _, metrics = _run(run_dir, overrides)
    assert os.environ["WANDB_MODE"] in ("offline", "dryrun")  # no login prompt on a fresh machine
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    (run_file,) = runs[0].glob("run-*.wandb")
    rows = history(run_file)
    logged = {k for row in rows for k in row}
    assert {"val/acc1", "val/loss", "train/loss"} <= logged, logged
    assert any(k.startswith("lr") for k in logged), logged  # the learning rate, per parameter group
    last_val = [row["val/acc1"] for row in rows if "val/acc1" in row][-1]
    assert last_val == pytest.approx(metrics["val/acc1"])  # one epoch: the best checkpoint is the last
    assert {"model", "data", "module", "trainer"} <= config_keys(run_file)  # the resolved config


def test_resume_from_last_checkpoint_continues_the_schedule(tmp_path, tiny_synthetic):
    run_dir = tmp_path / "run"
    _run(run_dir, [*tiny_synthetic, "logger=none", "trainer.max_epochs=1"])
    last = run_dir / "checkpoints" / "last.ckpt"
    import torch

    first = torch.load(last, weights_only=True)
    _, metrics = _run(run_dir, [*tiny_synthetic, "logger=none", "trainer.max_epochs=2", "ckpt_path=last"])
    second = torch.load(last, weights_only=True)
    assert second["epoch"] > first["epoch"]
    assert second["global_step"] == 2 * first["global_step"]  # one more epoch, not a restart
    sched = second["lr_schedulers"][0]
    assert sched["last_epoch"] == second["global_step"]  # the per-step schedule carried on
    assert "val/acc1" in metrics


def test_temporal_control_switch_reaches_the_batches(tmp_path, tiny_synthetic):
    from hydra.utils import instantiate

    cfg = compose_config("train", [*tiny_synthetic, "data.temporal_control=repeat"], tmp_path)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    video = next(iter(dm.val_dataloader()))["video"]  # (B, C, T, H, W)
    assert (video - video[:, :, :1]).abs().max() == 0


def test_unknown_model_name_is_a_clear_error(tmp_path, tiny_synthetic):
    cfg = compose_config("train", [*tiny_synthetic, "logger=none"], tmp_path)
    cfg.model.name = "resnet_9000"
    with pytest.raises(UnknownModelError, match="Known models: .*uniformer_tiny"):
        train(cfg)


def test_cli_unknown_model_lists_known_ones(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "videorec.train", "model=resnet_9000", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode != 0
    assert "model/resnet_9000" in out.stderr and "uniformer_tiny" in out.stderr and "mvit_b" in out.stderr


def test_predict_names_top_classes_and_skips_broken_files(tmp_path, trained, tiny_synthetic):
    from videorec.predict import predict

    run_dir, _ = trained
    data_root = Path(next(o for o in tiny_synthetic if o.startswith("data.root=")).split("=", 1)[1])
    videos = tmp_path / "mine"
    videos.mkdir()
    for name in ("clockwise", "move_left"):
        (videos / f"{name}.mp4").write_bytes((data_root / "videos" / "val" / name / "0000.mp4").read_bytes())
    (videos / "broken.mp4").write_text("not a video")
    overrides = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={videos}", "topk=3", "num_workers=0"]
    cfg = compose_config("predict", overrides, tmp_path / "out")
    results = predict(cfg)
    assert [Path(r["path"]).name for r in results] == ["clockwise.mp4", "move_left.mp4"]
    for r in results:
        assert len(r["top"]) == 3 and r["num_views"] == 2
        scores = [t["score"] for t in r["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert all(t["name"] in CLASSES for t in r["top"])
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(saved["videos"]) == 2 and len(saved["skipped"]) == 1 and "broken.mp4" in saved["skipped"][0]
    # a list file (a header, a label column, relative paths) and output= for the JSON
    listed = tmp_path / "mine" / "to_check.csv"
    listed.write_text("path,label\nclockwise.mp4,4\nmove_left.mp4,1\n\nbroken.mp4,0\n")
    out = tmp_path / "elsewhere" / "answers.json"
    again = predict(compose_config("predict", [*overrides[:1], f"input={listed}", f"output={out}", "num_workers=0",
                                              "topk=3"], tmp_path / "out3"))  # fmt: skip
    assert [r["top"] for r in again] == [r["top"] for r in results]
    assert len(json.loads(out.read_text())["skipped"]) == 1
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        predict(compose_config("predict", [*overrides[:1], f"input={tmp_path / 'nope'}"], tmp_path / "out2"))


def test_compiled_run_checkpoint_loads_in_eval_predict_and_create_model(tmp_path, tiny_synthetic):
    """`module.compile=true` trains a compiled backbone; its checkpoints keep the plain parameter names."""
    import torch

    from videorec.models import create_model
    from videorec.predict import predict

    run_dir = tmp_path / "run"
    _run(run_dir, [*tiny_synthetic, "logger=none", "trainer.max_epochs=1", "module.compile=true"])
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k] and any(k.startswith("backbone.") for k in state)
    _, result = _run(tmp_path / "eval", [f"ckpt_path={last}", "trainer=cpu"], config="eval")
    assert result["num_videos"] > 0
    data_root = Path(next(o for o in tiny_synthetic if o.startswith("data.root=")).split("=", 1)[1])
    video = data_root / "videos" / "val" / "clockwise" / "0000.mp4"
    (top,) = predict(
        compose_config("predict", [f"ckpt_path={last}", f"input={video}", "num_workers=0"], tmp_path / "p")
    )
    assert top["top"][0]["name"] in CLASSES
    model = create_model("uniformer_tiny", pretrained=str(last))
    plain = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())
    # checkpoints written before compiled modules kept their names (backbone._orig_mod.*) load too
    ckpt = torch.load(last, weights_only=True)
    ckpt["state_dict"] = {k.replace("backbone.", "backbone._orig_mod.", 1): v for k, v in state.items()}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    _, result_old = _run(tmp_path / "eval_old", [f"ckpt_path={old}", "trainer=cpu"], config="eval")
    assert result_old["video_acc1"] == result["video_acc1"]
    assert all(
        torch.equal(create_model("uniformer_tiny", pretrained=str(old)).state_dict()[k], v) for k, v in plain.items()
    )


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_export_runs_without_videorec_and_matches_the_checkpoint(tmp_path, trained, fmt):
    """The exported file, loaded by its own runtime in a fresh process that never imports videorec, gives the
    checkpoint model's logits; its .json names the classes and the preprocessing."""
    import torch

    from videorec.export import export
    from videorec.lit import VideoClassifier

    run_dir, _ = trained
    out = tmp_path / f"model.{fmt}"
    overrides = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"format={fmt}", f"output={out}"]
    info = export(compose_config("export", overrides, tmp_path / "run"))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta == json.loads(json.dumps(info)) and meta["class_names"] == list(CLASSES)
    assert meta["input"]["shape"] == ["batch", 3, 8, 64, 64] and meta["preprocessing"]["mean"] == [0.45] * 3
    assert meta["max_abs_diff_vs_checkpoint"] < 1e-4
    onnx = "import onnxruntime as ort; s = ort.InferenceSession(path); "
    onnx += "y = torch.from_numpy(s.run(None, {'video': x.numpy()})[0])"
    load = {
        "torchscript": "m = torch.jit.load(path); y = m(x)",
        "exported": "m = torch.export.load(path).module(); y = m(x)",
        "onnx": onnx,
    }[fmt]
    script = (
        "import sys, torch\n"
        f"path = {str(out)!r}\n"
        "torch.manual_seed(0); x = torch.randn(3, 3, 8, 64, 64)\n"  # another batch size than the export's
        f"{load}\n"
        "torch.save(y, sys.argv[1]); assert 'videorec' not in sys.modules\n"
    )
    logits = tmp_path / "y.pt"
    subprocess.run([sys.executable, "-c", script, str(logits)], check=True, timeout=300, cwd=tmp_path)
    model = VideoClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert (torch.load(logits) - expected).abs().max() < 1e-4
