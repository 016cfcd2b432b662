"""The embedded synthetic dataset: deterministic, classes are time reversals, real mp4s read through decord."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from videorec.data import SyntheticDataModule
from videorec.data.decoding import read_frames
from videorec.data.synthetic import CLASSES, FRAMES, SIZE, VERSION, generate, render


def _digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*.mp4")}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "synthetic-v1"
    dm = SyntheticDataModule(root=str(root), train_per_class=2, val_per_class=1, num_workers=0)
    dm.prepare_data()
    return root


def test_class_list_is_static_and_valid_before_generation(tmp_path):
    dm = SyntheticDataModule(root=str(tmp_path / "not-yet"))
    assert dm.class_names == list(CLASSES) and dm.num_classes == 8
    assert not (tmp_path / "not-yet").exists()


def test_layout_lists_and_class_file(tiny_root):
    assert (tiny_root / "classes.txt").read_text().split() == list(CLASSES)
    lines = (tiny_root / "train.txt").read_text().splitlines()
    assert len(lines) == 16 and lines[0] == "videos/train/move_right/0000.mp4 0"
    assert len((tiny_root / "val.txt").read_text().splitlines()) == 8
    assert json.loads((tiny_root / "meta.json").read_text())["version"] == VERSION
    assert sum(p.stat().st_size for p in tiny_root.rglob("*.mp4")) < 24 * 50_000  # a few MB at full size


@pytest.mark.parametrize("pair", range(4))
def test_partner_classes_are_exact_time_reversals(pair):
    forward, backward = CLASSES[2 * pair], CLASSES[2 * pair + 1]
    for seed in range(3):
        a = render(forward, np.random.default_rng(seed))
        b = render(backward, np.random.default_rng(seed))
        assert a.shape == (FRAMES, SIZE, SIZE, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(b, a[::-1])
        assert not np.array_equal(a, b)  # the motion has a direction


def test_the_object_moves_through_the_clip():
    video = render("move_right", np.random.default_rng(0)).astype(np.float64)
    assert np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3)).min() > 0.3


def test_generation_is_deterministic(tiny_root, tmp_path):
    again = generate(tmp_path / "again", train_per_class=2, val_per_class=1)
    assert _digest(again) == _digest(tiny_root)
    assert (again / "train.txt").read_text() == (tiny_root / "train.txt").read_text()


def test_reads_through_the_kinetics_path_with_decord(tiny_root):
    dm = SyntheticDataModule(
        root=str(tiny_root),
        train_per_class=2,
        val_per_class=1,
        num_workers=0,
        batch_size=4,
        num_frames=8,
        sampling_rate=2,
        crop_size=64,
        eval_short_side=64,
        decoder="decord",  # decord stays supported; the default decoder is pyav
    )
    assert dm.decoder == "decord"
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (4, 3, 8, 64, 64) and batch["skipped"] == []
    frames = read_frames(tiny_root / "videos/val/clockwise/0000.mp4", lambda n: np.arange(n), "decord", None)
    assert tuple(frames.shape) == (FRAMES, SIZE, SIZE, 3)
    original = render("clockwise", np.random.default_rng([0, 1, 4 // 2, 0]))  # partners share their scenes
    assert np.abs(frames.numpy().astype(int) - original).mean() < 6  # lossy, but the same video


def test_generation_is_atomic(tmp_path):
    root = tmp_path / "synthetic-v1"
    (tmp_path / ".synthetic-v1.tmp-deadbeef" / "videos").mkdir(parents=True)  # an interrupted earlier run
    root.mkdir()
    (root / "train.txt").write_text("half written\n")
    dm = SyntheticDataModule(root=str(root), train_per_class=1, val_per_class=1)
    with pytest.raises(RuntimeError, match="no complete synthetic dataset"):
        dm.prepare_data()
    (root / "train.txt").unlink()
    dm.prepare_data()  # an empty folder is fine
    assert (root / "meta.json").exists() and not list(tmp_path.glob(".synthetic-v1.tmp-*/train.txt"))
    with pytest.raises(RuntimeError, match="delete it or point data.root elsewhere"):
        SyntheticDataModule(root=str(root), train_per_class=3, val_per_class=1).prepare_data()


def _x_centroid_trend(video: np.ndarray) -> float:
    """Slope of the x centre of what changes between frames: > 0 moving right."""
    diff = np.abs(np.diff(video.astype(np.float64), axis=0)).sum(-1)  # (T-1, H, W)
    xs = np.arange(diff.shape[2])
    centres = (diff.sum(1) * xs).sum(1) / diff.sum((1, 2))
    return float(np.polyfit(np.arange(len(centres)), centres, 1)[0])


def test_flip_labels_follow_the_mirrored_motion(tmp_path):
    mapping = SyntheticDataModule(root=str(tmp_path)).flip_labels()
    assert all(mapping[mapping[i]] == i for i in mapping)  # an involution
    assert {CLASSES[i]: CLASSES[j] for i, j in mapping.items() if i != j} == {
        "move_right": "move_left",
        "move_left": "move_right",
        "clockwise": "counterclockwise",
        "counterclockwise": "clockwise",
    }
    video = render("move_right", np.random.default_rng(3))
    assert _x_centroid_trend(video) > 0.1
    assert _x_centroid_trend(video[:, :, ::-1]) < -0.1  # mirrored: a move_left video
