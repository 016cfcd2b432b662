"""End to end: tiny fake SSv2 (real VP9 webm + the three official json files, or extracted frames) and Kinetics
(every list format) datasets trained for a few steps through `videorec.train.train` with a composed config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from video_factory import SSV2_TEMPLATES as TEMPLATES
from video_factory import write_kinetics_dataset
from video_factory import write_ssv2_dataset as write_ssv2

from videorec.data import ListFileError, SSv2DataModule


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory) -> Path:
    return write_ssv2(tmp_path_factory.mktemp("ssv2"), frames_too=True)


def test_ssv2_classes_records_and_flip_pairs(ssv2_root):
    dm = SSv2DataModule(root=str(ssv2_root), num_workers=0)
    assert dm.class_names == TEMPLATES and dm.num_classes == 4  # index order of the label file
    dm.setup()
    assert [len(dm.records[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    assert all(Path(r.path).suffix == ".webm" and Path(r.path).is_file() for r in dm.records["train"])
    # left/right classes swap; "Turning the camera left" has no "right" partner here: never flipped
    assert dm.flip_labels() == {0: 1, 1: 0, 3: None}
    assert not dm.flip  # off unless asked for


def test_ssv2_flip_swaps_left_and_right(ssv2_root):
    dm = SSv2DataModule(root=str(ssv2_root), num_workers=0, num_frames=4, crop_size=32, flip=True)
    dataset = dm.dataset("train")
    dataset.flip_prob = 1.0
    dataset.transform = lambda frames: frames.permute(3, 0, 1, 2)  # the raw frames as a (C, T, H, W) clip
    plain = SSv2DataModule(root=str(ssv2_root), num_workers=0, num_frames=4, crop_size=32).dataset("train")
    plain.transform = lambda frames: frames.permute(3, 0, 1, 2)
    for index, record in enumerate(dm.records["train"]):
        torch.manual_seed(index)
        (flipped,) = dataset[index]
        torch.manual_seed(index)
        (unflipped,) = plain[index]
        expected = {0: 1, 1: 0, 2: 2, 3: 3}[record.label]
        assert flipped["label"] == expected and unflipped["label"] == record.label
        if record.label == 3:
            assert torch.equal(flipped["video"], unflipped["video"])  # no partner: not flipped
        else:
            assert torch.equal(flipped["video"], unflipped["video"].flip(-1))  # mirrored in W


def test_ssv2_test_views_differ(ssv2_root):
    dm = SSv2DataModule(root=str(ssv2_root), num_workers=0, num_frames=4, crop_size=32, eval_clips=2, eval_crops=3)
    batch = next(iter(dm.test_dataloader()))
    first = batch["video"][batch["video_index"] == 0]
    assert len(first) == 6 and len({v.sum().item() for v in first}) == 6


def test_ssv2_frame_folders(ssv2_root):
    dm = SSv2DataModule(root=str(ssv2_root), frame_dir="frames", num_workers=0, num_frames=4, crop_size=32)
    dm.setup("validate")
    assert all(Path(r.path).is_dir() for r in dm.records["val"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (4, 3, 4, 32, 32) and batch["skipped"] == []


def test_ssv2_unknown_template_names_file_and_entry(tmp_path):
    root = write_ssv2(tmp_path, per_class=1)
    path = root / "labels" / "something-something-v2-train.json"
    entries = json.loads(path.read_text())
    entries[2]["template"] = "Juggling [something]"
    path.write_text(json.dumps(entries))
    with pytest.raises(ListFileError, match=r"something-something-v2-train.json: entry 3 .*Juggling something"):
        SSv2DataModule(root=str(root)).setup("fit")


def _train(tmp_path: Path, overrides: list[str]) -> dict[str, float]:
    from videorec.train import train

    cfg = compose_config(
        "train",
        [
            "model=uniformer_tiny",
            "trainer=cpu",
            "logger=csv",
            "test=true",
            "data.num_workers=0",
            "data.batch_size=2",
            "data.num_frames=4",
            "data.crop_size=32",
            "++trainer.limit_train_batches=1",
            "++trainer.limit_val_batches=1",
            "++trainer.limit_test_batches=1",
            "++trainer.num_sanity_val_steps=0",
            "trainer.max_epochs=1",
            *overrides,
        ],
        tmp_path / "run",
    )
    return train(cfg)


def _check_metrics(metrics: dict[str, float], num_classes: int) -> None:
    assert np.isfinite(metrics["val/loss"]) and 0 <= metrics["val/acc1"] <= 1
    assert any(key.startswith("test/") for key in metrics)


def test_ssv2_trains_end_to_end(ssv2_root, tmp_path):
    metrics = _train(tmp_path, ["data=ssv2", f"data.root={ssv2_root}", "data.eval_crops=3", "data.randaug_n=2"])
    _check_metrics(metrics, 4)


@pytest.mark.parametrize("fmt", ["space", "comma", "official", "tree"])
def test_kinetics_trains_end_to_end(tmp_path, fmt):
    # the first three K400 classes: integer labels 0-2 and the names agree with the canonical K400 list
    classes = ["abseiling", "air drumming", "answering questions"]
    root = write_kinetics_dataset(tmp_path / "k400", classes, per_class=2, num_frames=12, fmt=fmt)
    lists = {
        "space": ("train.txt", "val.txt"),
        "comma": ("train.csv", "val.csv"),
        "official": ("train.csv", "val.csv"),
        "tree": ("train", "val"),
    }[fmt]
    metrics = _train(
        tmp_path,
        [
            "data=k400",
            f"data.root={root}",
            f"data.train_list={lists[0]}",
            f"data.val_list={lists[1]}",
            "data.sampling_rate=2",
            "data.eval_clips=2",
            "data.eval_short_side=32",
        ],
    )
    _check_metrics(metrics, 400)
