"""End to end: tiny fake SSv2 (real VP9 webm + the three official json files, or extracted frames) and Kinetics
(every list format) datasets trained for a few steps through `videorec.train.train` with a composed config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from video_factory import moving_square_frames, write_kinetics_dataset, write_video

from videorec.data import ListFileError, SSv2DataModule

TEMPLATES = [
    "Pushing something from left to right",
    "Pushing something from right to left",
    "Holding something next to something",
    "Turning the camera left while filming something",
]
SSV2_ENTRY = {  # the official schema of the train / validation json entries
    0: ("Pushing [something] from left to right", ["pen"]),
    1: ("Pushing [something] from right to left", ["cup"]),
    2: ("Holding [something] next to [something]", ["potato", "bottle"]),
    3: ("Turning the camera left while filming [something]", ["car"]),
}


def write_ssv2(root: Path, per_class: int = 2, frames_too: bool = False) -> Path:
    """A fake Something-Something v2 download: labels/*.json and 20bn-something-something-v2/<id>.webm."""
    labels = root / "labels"
    labels.mkdir(parents=True)
    (labels / "something-something-v2-labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(TEMPLATES)}))
    video_id = 1000
    for split, count in (("train", per_class), ("validation", 1)):
        entries = []
        for template, objects in SSV2_ENTRY.values():
            for _ in range(count):
                video_id += 1
                frames = moving_square_frames(20, 32, 40, seed=video_id)
                write_video(root / "20bn-something-something-v2" / f"{video_id}.webm", frames, fps=12, codec="vp9")
                if frames_too:
                    from torchvision.io import write_jpeg

                    folder = root / "frames" / str(video_id)
                    folder.mkdir(parents=True)
                    for i, frame in enumerate(frames):
                        write_jpeg(torch.from_numpy(frame).permute(2, 0, 1).contiguous(), str(folder / f"{i:06d}.jpg"))
                label_text = template.replace("[something]", objects[0])
                entries.append(
                    {"id": str(video_id), "label": label_text, "template": template, "placeholders": objects}
                )
        (labels / f"something-something-v2-{split}.json").write_text(json.dumps(entries))
    return root


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
    dataset.transform = lambda frames: frames  # look at the raw frames
    plain = SSv2DataModule(root=str(ssv2_root), num_workers=0, num_frames=4, crop_size=32).dataset("train")
    plain.transform = lambda frames: frames
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
            assert torch.equal(flipped["video"], unflipped["video"].flip(2))


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
            "+trainer.max_steps=1",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            "+trainer.num_sanity_val_steps=0",
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
