"""Evaluation as papers report it: hand-computed figures from a stub backbone with known logits, the same figures in
one process, two torchrun processes and `trainer=ddp_cpu`, the pictures, W&B records, and predict's progress bar.

The videos are flat colours that tell a model which view it sees: red encodes the video, green the frame (so the
first frame tells the clip) and a horizontal blue ramp the crop (left, centre, right of a 48x32 frame). The stub
backbone reads them back from the normalised input and returns the probabilities of the table ``VIEWS`` as logits.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import compose_config, synthetic_overrides
from hydra.utils import instantiate
from subprocs import child_env, free_port, launch, wait_ok
from video_factory import write_video

from videorec.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from videorec.data.transforms import MEAN, STD
from videorec.eval import evaluate, write_pictures
from videorec.models import is_model, list_models, register_model, unregister_model
from videorec.train import build_module

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["archery", "bowling", "curling", "diving", "fencing", "golf"]
FRAMES, HEIGHT, WIDTH = 16, 32, 48


# --- the videos -------------------------------------------------------------------------------------------------------


def flat_frames(video: int) -> np.ndarray:
    """Red 16 + 36 * video; green 8 * t + 4 (frame t); blue 4 * x + 40 (column x): crops' mean blue 102, 134, 166."""
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 0] = 16 + 36 * video
    frames[..., 1] = (8 * np.arange(FRAMES) + 4)[:, None, None]
    frames[..., 2] = (4 * np.arange(WIDTH) + 40)[None, None, :]
    return frames


# video -> (label, probabilities of every view, {(clip, crop): probabilities of the views that differ}).
# Clips: 0 starts at frame 0, 1 at frame 12 (4 frames at stride 1 from 16); crops: 0 left, 1 centre, 2 right.
VIEWS: dict[int, tuple[int, list[float], dict[tuple[int, int], list[float]]]] = {
    0: (0, [0.7, 0.2, 0.1, 0, 0, 0], {}),
    1: (1, [0.05, 0.9, 0.05, 0, 0, 0], {(0, c): [0.6, 0.35, 0.05, 0, 0, 0] for c in range(3)}),
    2: (2, [0.6, 0.1, 0.3, 0, 0, 0], {(0, 0): [0.1, 0.1, 0.8, 0, 0, 0]}),
    3: (0, [0.5, 0.3, 0.2, 0, 0, 0], {(1, 2): [0.2, 0.7, 0.1, 0, 0, 0]}),
    4: (1, [0.02, 0.01, 0.3, 0.27, 0.2, 0.2], {}),
}
LABELS_7 = [0, 1, 2, 0, 1, 2, 0]  # the seven videos of the 1 = N check


def view_probs(video: int, clip: int, crop: int) -> list[float]:
    _, default, special = VIEWS[video]
    return special.get((clip, crop), default)


class StubBackbone(nn.Module):
    """Known logits: log of ``view_probs`` for the view it recognises in the (normalised) pixels."""

    def __init__(self, num_classes: int = 6, **_: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1, 1))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        pixels = (video * self.std + self.mean) * 255
        red = pixels[:, 0].mean((1, 2, 3))
        first_green = pixels[:, 1, 0].mean((1, 2))
        blue = pixels[:, 2].mean((1, 2, 3))
        rows = []
        for r, g, b in zip(red.tolist(), first_green.tolist(), blue.tolist(), strict=True):
            rows.append(view_probs(round((r - 16) / 36), int(g > 52), round((b - 102) / 32)))
        return torch.tensor(rows, device=video.device).log().clamp(min=-30.0)


def eval_stub(**kwargs) -> nn.Module:
    return StubBackbone(**kwargs)


@pytest.fixture(scope="module", autouse=True)
def stub_registered():
    """The stub is a registered model while this module's tests run, and only then (the zoo tests list the
    registry)."""
    register_model(eval_stub)
    yield
    assert unregister_model("eval_stub") is eval_stub
    assert not is_model("eval_stub") and "eval_stub" not in list_models()


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory) -> Path:
    """Seven flat-colour videos, the class list, `hand.txt` (videos 0-4 with VIEWS' labels) and `seven.txt`."""
    root = tmp_path_factory.mktemp("flat")
    for v in range(7):
        write_video(root / "videos" / f"v{v}.mp4", flat_frames(v), crf=0)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "hand.txt").write_text("".join(f"videos/v{v}.mp4 {VIEWS[v][0]}\n" for v in VIEWS))
    (root / "seven.txt").write_text("".join(f"videos/v{v}.mp4 {label}\n" for v, label in enumerate(LABELS_7)))
    return root


def build_checkpoint(path: Path, root: Path, model: str, test_list: str, batch_size: int = 4) -> Path:
    """A checkpoint as training writes it (hyperparameters with the data configuration), without training."""
    overrides = [
        "data=k400",
        f"data.root={root}",
        f"data.class_names_file={root / 'classes.txt'}",
        f"data.test_list={test_list}",
        "data.num_frames=4",
        "data.sampling_rate=1",
        "data.crop_size=32",
        "data.eval_short_side=32",
        "data.eval_clips=2",
        "data.eval_crops=3",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        "model=uniformer_tiny",
        f"model.name={model}",
        "logger=none",
    ]
    cfg = compose_config("train", overrides, path.parent)
    datamodule = instantiate(cfg.data)
    torch.manual_seed(0)
    module = build_module(cfg, datamodule.num_classes, datamodule.class_names)
    import lightning as L

    state = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def stub_ckpt(stub_registered, flat_root, tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("stub") / "stub.ckpt", flat_root, "eval_stub", "hand.txt")


def _eval(ckpt: Path, out: Path, *overrides: str) -> dict:
    return evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "trainer=cpu", *overrides], out))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- hand-computed figures --------------------------------------------------------------------------------------------


def test_stub_logits_give_the_hand_computed_figures(stub_ckpt, tmp_path):
    mean = _eval(stub_ckpt, tmp_path / "mean")
    saved = json.loads((tmp_path / "mean" / "eval.json").read_text())
    # 5 videos x 2 clips x 3 crops
    assert saved["num_videos"] == 5 and saved["num_clips"] == 30
    # clip level, every view alone: right views are v0 6, v1 3 (clip 1), v2 1 (clip 0 left), v3 5, v4 0 -> 15 / 30;
    # top-5 of 6 classes misses only v4's label (its smallest probability) -> 24 / 30
    assert saved["clip_acc1"] == pytest.approx(15 / 30)
    assert saved["clip_acc5"] == pytest.approx(24 / 30)
    nll = (
        6 * -math.log(0.7)
        + 3 * -math.log(0.35)
        + 3 * -math.log(0.9)
        + -math.log(0.8)
        + 5 * -math.log(0.3)
        + 5 * -math.log(0.5)
        + -math.log(0.2)
        + 6 * -math.log(0.01)
    )
    assert saved["clip_loss"] == pytest.approx(nll / 30, rel=1e-5)
    # mean ensemble: v0 [.7 .2 .1] right; v1 [.325 .625 .05] right; v2 [3.1 .6 2.3]/6 -> archery, wrong;
    # v3 [2.7 2.2 1.1]/6 -> archery, right; v4 -> curling, wrong: 3 / 5; top-5 misses v4 only
    assert saved["video_acc1"] == pytest.approx(3 / 5) and saved["video_acc5"] == pytest.approx(4 / 5)
    # per class: archery 2/2, bowling 1/2 (v4 taken for curling), curling 0/1 (v2 taken for archery)
    assert saved["mean_class_acc"] == pytest.approx((1 + 0.5 + 0) / 3)
    rows = {r["name"]: r for r in _csv(tmp_path / "mean" / "per_class.csv")}
    assert [rows[n]["support"] for n in CLASSES] == ["2", "2", "1", "0", "0", "0"]
    assert float(rows["archery"]["accuracy"]) == 1.0 and rows["archery"]["most_confused_with"] == ""
    assert float(rows["bowling"]["accuracy"]) == 0.5 and rows["bowling"]["most_confused_with"] == "curling"
    assert float(rows["curling"]["accuracy"]) == 0.0 and rows["curling"]["most_confused_with"] == "archery"
    assert math.isnan(float(rows["diving"]["accuracy"]))
    predictions = _csv(tmp_path / "mean" / "predictions.csv")
    assert [p["pred_name"] for p in predictions] == ["archery", "bowling", "archery", "archery", "curling"]
    assert float(predictions[2]["score"]) == pytest.approx(3.1 / 6, abs=1e-5)
    assert float(predictions[3]["score"]) == pytest.approx(2.7 / 6, abs=1e-5)
    assert all(p["num_views"] == "6" for p in predictions)
    assert mean == {k: v for k, v in saved.items() if k != "files"}

    best = _eval(stub_ckpt, tmp_path / "max", "ensemble=max")
    # max ensemble: v2 [.6 .1 .8] -> curling, right now; v3 [.5 .7 .2] -> bowling, wrong now: still 3 / 5,
    # but per class archery 1/2, bowling 1/2, curling 1/1
    assert best["clip_acc1"] == mean["clip_acc1"] and best["clip_loss"] == mean["clip_loss"]
    assert best["video_acc1"] == pytest.approx(3 / 5) and best["video_acc5"] == pytest.approx(4 / 5)
    assert best["mean_class_acc"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    rows = {r["name"]: r for r in _csv(tmp_path / "max" / "per_class.csv")}
    assert rows["archery"]["most_confused_with"] == "bowling" and float(rows["curling"]["accuracy"]) == 1.0
    predictions = _csv(tmp_path / "max" / "predictions.csv")
    assert [p["pred_name"] for p in predictions] == ["archery", "bowling", "curling", "bowling", "curling"]
    assert float(predictions[2]["score"]) == pytest.approx(0.8, abs=1e-6)


def test_views_seen_twice_count_once_at_clip_and_video_level():
    from videorec.lit import aggregate_views

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    views = dict(label=torch.tensor([0, 0, 1]), video_index=torch.tensor([0, 0, 1]),
                 clip_index=torch.tensor([0, 1, 0]), crop_index=torch.zeros(3, dtype=torch.long))  # fmt: skip
    loss = -probs[torch.arange(3), views["label"]].log()
    once = aggregate_views(probs, **views, loss=loss)
    # the last view again, and the first, in another order: what a padded sampler or a gather could hand over
    order = torch.tensor([2, 0, 1, 2, 0])
    twice = aggregate_views(probs[order], **{k: v[order] for k, v in views.items()}, loss=loss[order])
    assert once["clip_acc1"] == twice["clip_acc1"] == pytest.approx(2 / 3)
    assert once["clip_loss"] == twice["clip_loss"] == pytest.approx(float(loss.double().mean()))
    assert once["num_clips"] == twice["num_clips"] == 3
    assert once["video_acc1"] == twice["video_acc1"] == 1.0


# --- 1 process = N processes ------------------------------------------------------------------------------------------


FIGURES = ("clip_acc1", "clip_acc5", "clip_loss", "video_acc1", "video_acc5", "mean_class_acc", "num_videos")
FIGURES += ("num_clips", "skipped_videos", "eval_clips", "eval_crops", "split", "ensemble")


def test_one_process_two_torchrun_nodes_and_ddp_spawn_give_the_same_figures(flat_root, tmp_path):
    """Seven videos (odd: the ranks' shares differ), 2 clips x 3 crops, 4 (video, clip) items a step (so the steps
    differ too: 4+4+4+2 items in one process, 4+3 on each rank), a randomly initialised UniFormer: every figure of
    eval.json, every probability of predictions.csv and the per-class table are equal in one process, under torchrun
    as two nodes of one process each (two launchers, as on two machines) and under ddp_spawn (`trainer=ddp_cpu`).

    Every process computes on one thread: CPU kernels split their sums by thread, and with 2 threads here against 1
    in the subprocesses the clip loss differed in the 8th digit (2e-8 relative), the kernels' doing, not the
    evaluation's."""
    ckpt = build_checkpoint(tmp_path / "tiny.ckpt", flat_root, "uniformer_tiny", "seven.txt")
    runs = {"one": tmp_path / "one", "torchrun": tmp_path / "torchrun", "spawn": tmp_path / "spawn"}
    common = [f"ckpt_path={ckpt}", "data.num_workers=0"]
    port = free_port()
    cmds = {
        f"node{node}": [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "videorec.eval", *common, "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
            "++trainer.strategy=ddp", f"hydra.run.dir={runs['torchrun']}",
        ]
        for node in range(2)
    }  # fmt: skip
    spawn_dir = f"hydra.run.dir={runs['spawn']}"
    cmds["spawn"] = [sys.executable, "-m", "videorec.eval", *common, "trainer=ddp_cpu", spawn_dir]
    logs = {name: tmp_path / f"{name}.log" for name in cmds}
    procs = {name: launch(cmd, tmp_path, logs[name]) for name, cmd in cmds.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): kernels split their sums by thread
    try:
        single = _eval(ckpt, runs["one"])
    except BaseException:
        for proc in procs.values():
            proc.kill()
        raise
    finally:
        torch.set_num_threads(threads)
    wait_ok(list(procs.values()), list(logs.values()), "an evaluation")

    reports = {name: json.loads((run / "eval.json").read_text()) for name, run in runs.items()}
    assert reports["one"]["num_videos"] == 7 and reports["one"]["num_clips"] == 7 * 2 * 3
    assert {k: reports["one"][k] for k in FIGURES} == {k: single[k] for k in FIGURES}
    assert [reports[n]["world_size"] for n in runs] == [1, 2, 2]
    for name in ("torchrun", "spawn"):
        assert {k: reports[name][k] for k in FIGURES} == {k: reports["one"][k] for k in FIGURES}, name
        # the same videos with the same probabilities, and the same per-class table
        for table in ("predictions.csv", "per_class.csv"):
            assert (runs[name] / table).read_text() == (runs["one"] / table).read_text(), (name, table)
    # torchrun: global rank 0 alone reports (one summary table for the two nodes); the launching process of
    # ddp_spawn read the report its rank 0 wrote and shows it
    node_logs = logs["node0"].read_text() + logs["node1"].read_text()
    assert len(re.findall(r"videorec eval: uniformer_tiny", node_logs)) == 1, node_logs[-3000:]
    spawn_log = logs["spawn"].read_text()
    assert "videorec eval: uniformer_tiny" in spawn_log and "video_acc1" in spawn_log


# --- pictures ---------------------------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_eval_writes_a_confusion_matrix_and_a_per_class_chart(stub_ckpt, tmp_path):
    result = _eval(stub_ckpt, tmp_path)
    for name in ("confusion_matrix.png", "per_class_accuracy.png"):
        width, height = _png_size(tmp_path / name)
        assert 300 <= width <= 4000 and 200 <= height <= 4000, (name, width, height)
        assert (tmp_path / name).stat().st_size > 5000
    assert not (tmp_path / "top_confusions.csv").exists()
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["files"]["confusion matrix"] == str(tmp_path / "confusion_matrix.png")
    assert result["num_videos"] == 5


def test_above_100_classes_the_top_confusions_table_replaces_the_matrix(tmp_path):
    K = 150
    names = [f"class {k:03d}" for k in range(K)]
    label = torch.arange(K).repeat_interleave(3)  # three videos a class
    pred = label.clone()
    pred[2::3] = (label[2::3] + 1) % K  # every class's third video taken for the next class
    pred[label == 5] = 9  # and all of class 5 for class 9: the most frequent confusion
    videos = {"label": label, "probs": torch.nn.functional.one_hot(pred, K).float()}
    from videorec.eval import per_class_report

    per_class = per_class_report(videos, names, K)
    files = write_pictures(videos, per_class, names, tmp_path)
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert files["top confusions"] == str(tmp_path / "top_confusions.csv")
    rows = _csv(tmp_path / "top_confusions.csv")
    assert len(rows) == 100 and [int(r["count"]) for r in rows] == sorted((int(r["count"]) for r in rows), reverse=True)
    assert (rows[0]["true_name"], rows[0]["predicted_name"], rows[0]["count"]) == ("class 005", "class 009", "3")
    assert float(rows[0]["fraction_of_true"]) == 1.0 and float(rows[1]["fraction_of_true"]) == pytest.approx(1 / 3)
    assert all(r["true"] != r["predicted"] for r in rows)
    width, height = _png_size(tmp_path / "per_class_accuracy.png")  # the worst and best 20 of 150 classes
    assert 300 <= width <= 4000 and 300 <= height <= 4000


# --- W&B --------------------------------------------------------------------------------------------------------------


def _wandb_run_file(folder: Path) -> Path:
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((folder / "wandb").iterdir()) if (folder / "wandb").is_dir() else folder
    (run_file,) = runs[0].glob("run-*.wandb")
    return run_file


def test_eval_logs_its_numbers_pictures_and_per_class_table_to_wandb(stub_ckpt, tmp_path, monkeypatch):
    from wandb_records import history

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    result = _eval(stub_ckpt, tmp_path / "run", "logger=wandb")
    assert os.environ["WANDB_MODE"] in ("offline", "dryrun")  # no login prompt on a fresh machine
    run_file = _wandb_run_file(tmp_path / "run")
    logged = {k: v for row in history(run_file) for k, v in row.items()}  # nested keys read as "a/b"
    assert logged["eval/video_acc1"] == pytest.approx(result["video_acc1"]) == pytest.approx(3 / 5)
    assert logged["eval/mean_class_acc"] == pytest.approx(0.5) and logged["eval/num_clips"] == 30
    for name in ("confusion_matrix", "per_class_accuracy"):  # wandb.Image, the file kept in the run folder
        assert logged[f"eval/{name}/_type"] == "images/separated" and logged[f"eval/{name}/format"] == "png"
        (image,) = logged[f"eval/{name}/filenames"]
        assert (run_file.parent / "files" / image).is_file()
    assert logged["eval/confusion_matrix/width"] > 300
    assert logged["eval/per_class/_type"] == "table-file"  # wandb.Table of per_class.csv
    assert logged["eval/per_class/nrows"] == len(CLASSES) and logged["eval/per_class/ncols"] == 6


def test_training_logs_captioned_validation_clips_to_wandb(tmp_path, monkeypatch, tiny_synthetic_root):
    from wandb_records import history

    from videorec.train import train

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    overrides = [
        *synthetic_overrides(tiny_synthetic_root),
        "logger=wandb",
        "trainer.max_epochs=2",
        "callbacks.val_samples.num_clips=3",
    ]
    train(compose_config("train", overrides, run_dir))
    rows = [row for row in history(_wandb_run_file(run_dir)) if "val/samples/_type" in row]
    assert len(rows) == 3  # one set per epoch and one for the final validation of the best checkpoint; no sanity check
    for epoch, row in enumerate(rows):
        assert row["val/samples/count"] == 3
        captions = row["val/samples/captions"]
        assert len(captions) == 3 and all(
            re.fullmatch(r"pred: \S+ \(\d\.\d\d\) \| true: \S+ \| (right|wrong)", c) for c in captions
        ), captions
        assert {c.split("true: ")[1].split(" ")[0] for c in captions} <= set(SYNTHETIC_CLASSES)
        files = sorted((run_dir / "media" / "val_samples").glob(f"epoch{epoch:03d}_*.mp4"))
        assert len(files) == 3 and all(f.stat().st_size > 1000 for f in files)


def test_validation_clips_under_torchrun_come_from_rank_zero_alone(tmp_path, tiny_synthetic_root):
    """Two torchrun processes train with logger=wandb and the default callbacks: rank 0 logs the clips while rank 1
    goes on, and neither waits for the other (a hang fails through the timeout)."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "videorec.train",
        *synthetic_overrides(tiny_synthetic_root), "trainer.devices=2", "++trainer.strategy=ddp",
        "logger=wandb", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    log = tmp_path / "train.log"
    wait_ok([launch(cmd, tmp_path, log, child_env(WANDB_DIR=str(tmp_path)))], [log], "training")
    from wandb_records import history

    rows = [row for row in history(_wandb_run_file(run_dir)) if "val/samples/_type" in row]
    assert [row["val/samples/count"] for row in rows] == [4, 4]  # the epoch, then the best checkpoint's validation
    files = sorted(p.name for p in (run_dir / "media" / "val_samples").iterdir())
    assert files == [f"epoch{e:03d}_{i}.mp4" for e in (0, 1) for i in range(4)]  # the files W&B was handed


# --- predict ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("progress", [True, False])
def test_predict_shows_a_progress_bar_over_the_videos(stub_ckpt, flat_root, tmp_path, capsys, progress):
    from videorec.predict import predict

    overrides = [f"ckpt_path={stub_ckpt}", f"input={flat_root / 'hand.txt'}", "device=cpu", "num_workers=0"]
    cfg = compose_config("predict", [*overrides, f"progress={str(progress).lower()}"], tmp_path)
    results = predict(cfg)
    out = capsys.readouterr().out
    bar = re.search(r"predicting on cpu\s.*?(\d+)/(\d+) videos", out)
    if progress:
        assert bar is not None and bar.groups() == ("5", "5"), out
    else:
        assert bar is None and "predicting" not in out, out
    # the mean ensemble's top class, as eval found it (predict's views are eval's)
    assert [r["top"][0]["name"] for r in results] == ["archery", "bowling", "archery", "archery", "curling"]
