"""The datamodule contract: batch keys and shapes, evaluation views, mixup targets, the temporal control switch,
and bad videos skipped and counted (through a real Lightning fit with `SkippedVideosCallback`)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from video_factory import (
    frame_id_frames,
    write_kinetics_dataset,
    write_text_as_video,
    write_truncated,
    write_video,
    write_zero_bytes,
)

from videorec.data import KineticsDataModule, SkippedVideosCallback

CLASSES = ["left", "right", "up"]
SMALL = dict(num_frames=4, sampling_rate=2, crop_size=24, num_workers=0, batch_size=4, class_names=CLASSES)


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory) -> Path:
    return write_kinetics_dataset(tmp_path_factory.mktemp("k"), CLASSES, per_class=2, num_frames=12, fmt="space")


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory, kinetics_root) -> Path:
    """4 good videos and 4 broken ones (truncated, zero bytes, text, missing) in one list."""
    root = tmp_path_factory.mktemp("broken")
    good = sorted(kinetics_root.glob("train/*/*.mp4"))[:4]
    lines = [f"{path} {i % 3}" for i, path in enumerate(good)]
    bad = [
        write_truncated(root / "truncated.mp4", good[0]),
        write_zero_bytes(root / "zero.mp4"),
        write_text_as_video(root / "text.mp4"),
        root / "missing.mp4",
    ]
    lines += [f"{path} 0" for path in bad]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def _all(loader) -> list[dict]:
    return list(loader)


def test_batch_contract(kinetics_root):
    dm = KineticsDataModule(root=str(kinetics_root), **SMALL)
    assert dm.num_classes == 3 and dm.class_names == CLASSES
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 3, 4, 24, 24) and batch["video"].dtype == torch.float32
    for key in ("label", "video_index", "clip_index", "crop_index"):
        assert batch[key].shape == (4,) and batch[key].dtype == torch.long
    assert batch["skipped"] == [] and "target" not in batch
    # normalised with mean/std 0.45/0.225: [0, 1] pixels map into [-2, 2.45]
    assert batch["video"].min() >= -2.0 - 1e-4 and batch["video"].max() <= 2.4445 + 1e-4
    val = _all(dm.val_dataloader())
    assert sum(len(b["label"]) for b in val) == 6
    assert all(b["clip_index"].eq(0).all() and b["crop_index"].eq(0).all() for b in val)


def test_test_views_cover_every_clip_and_crop_once(kinetics_root):
    dm = KineticsDataModule(root=str(kinetics_root), eval_clips=2, eval_crops=3, **SMALL)
    dm.setup("test")
    batches = _all(dm.test_dataloader())
    views = [
        (int(v), int(c), int(k))
        for b in batches
        for v, c, k in zip(b["video_index"], b["clip_index"], b["crop_index"], strict=True)
    ]
    assert sorted(views) == [(v, c, k) for v in range(6) for c in range(2) for k in range(3)]
    video = torch.cat([b["video"] for b in batches])
    first = [i for i, view in enumerate(views) if view[0] == 0]
    assert len({video[i].sum().item() for i in first}) == 6  # six distinct views of video 0


def test_mixup_and_cutmix_give_soft_targets(kinetics_root):
    dm = KineticsDataModule(root=str(kinetics_root), mixup_alpha=0.8, cutmix_alpha=1.0, **SMALL)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        assert batch["target"].shape == (len(batch["label"]), 3)
        assert torch.allclose(batch["target"].sum(1), torch.ones(len(batch["label"])))
    assert "target" not in next(iter(dm.val_dataloader()))


@pytest.mark.parametrize("control", ["none", "repeat", "shuffle"])
def test_temporal_control_switch(tmp_path, control):
    write_video(tmp_path / "v.mp4", frame_id_frames(16, 32, 32))
    (tmp_path / "train.txt").write_text("v.mp4 0\n" * 4)
    (tmp_path / "val.txt").write_text("v.mp4 0\n")
    torch.manual_seed(0)
    dm = KineticsDataModule(
        root=str(tmp_path), temporal_control=control, **(SMALL | dict(num_frames=8, sampling_rate=2))
    )
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for clip in next(iter(loader))["video"]:
            levels = clip.mean(dim=(0, 2, 3))  # (T,) brightness encodes the frame index
            steps = levels.diff()
            if control == "none":
                assert (steps > 0).all()
            elif control == "repeat":
                assert steps.abs().max() < 1e-3
            else:
                assert not (steps > 0).all() and levels.unique().numel() == 8


def test_bad_videos_are_skipped_and_named(broken_root):
    dm = KineticsDataModule(root=str(broken_root), **(SMALL | dict(batch_size=3)))
    dm.setup("fit")
    batches = _all(dm.train_dataloader())
    assert sum(len(b["label"]) for b in batches) == 4
    skipped = [name for b in batches for name in b["skipped"]]
    assert len(skipped) == 4
    for bad in ("truncated.mp4", "zero.mp4", "text.mp4", "missing.mp4"):
        assert any(str(broken_root / bad) in name for name in skipped), bad
    assert any("no such file" in name for name in skipped) and any("0 bytes" in name for name in skipped)


def test_a_batch_of_only_bad_videos_is_empty(broken_root, tmp_path):
    (tmp_path / "train.txt").write_text(f"{broken_root / 'zero.mp4'} 0\n{broken_root / 'missing.mp4'} 1\n")
    dm = KineticsDataModule(root=str(tmp_path), **SMALL)
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (0, 3, 4, 24, 24) and batch["label"].shape == (0,)
    assert len(batch["skipped"]) == 2


class _TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)

    def training_step(self, batch, batch_idx):
        if len(batch["label"]) == 0:
            return self.head.weight.sum() * 0
        return F.cross_entropy(self.head(batch["video"].mean(dim=(2, 3, 4))), batch["label"])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skipped_videos_callback_logs_the_count(broken_root, caplog):
    dm = KineticsDataModule(root=str(broken_root), **(SMALL | dict(batch_size=3)))
    callback = SkippedVideosCallback()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(_TinyModule(), datamodule=dm)
    assert trainer.callback_metrics["train/skipped_videos"].item() == 4
    assert trainer.callback_metrics["val/skipped_videos"].item() == 4
    assert callback.last_counts == {"train": 4, "val": 4}
    assert "skipped 4 undecodable video(s)" in caplog.text and "text.mp4" in caplog.text


def test_odd_sized_video_smaller_than_the_crop(tmp_path):
    write_video(tmp_path / "tiny.mp4", frame_id_frames(3, 15, 21))  # odd sides, below the crop, shorter than a clip
    (tmp_path / "train.txt").write_text("tiny.mp4 0\n")
    (tmp_path / "val.txt").write_text("tiny.mp4 0\n")
    dm = KineticsDataModule(root=str(tmp_path), eval_crops=3, **SMALL)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["video"].shape[1:] == (3, 4, 24, 24) and batch["skipped"] == []


def test_repeated_augmentation_gives_each_video_several_clips(kinetics_root):
    """data.num_samples=2: two differently augmented clips of each decoded video; batch_size still counts clips."""
    aug = dict(SMALL, train_scale=(0.3, 1.0), flip=True, random_erasing=0.5)
    dm = KineticsDataModule(root=str(kinetics_root), **aug, num_samples=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.batch_size == 2  # videos per step: 4 clips / 2 clips each
    batches = _all(loader)
    assert sum(len(b["label"]) for b in batches) == 2 * len(dm.records["train"]) and len(batches) == 3
    for batch in batches:
        video_index = batch["video_index"]
        assert torch.equal(video_index[0::2], video_index[1::2])  # consecutive clips of one video
        assert not torch.equal(batch["video"][0], batch["video"][1])  # each with its own augmentation
    again = _all(dm.train_dataloader())  # the same epoch draws the same clips: seeded by (seed, epoch, index, k)
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(batches, again, strict=True))
    plain = _all(KineticsDataModule(root=str(kinetics_root), **aug).train_dataloader())
    assert sum(len(b["label"]) for b in plain) == len(dm.records["train"])  # one clip a video by default
    with pytest.raises(ValueError, match="batch_size=4 must be a multiple of data.num_samples=3"):
        KineticsDataModule(root=str(kinetics_root), **SMALL, num_samples=3)
    # evaluation ignores it: every view of every video once
    assert sum(len(b["label"]) for b in _all(dm.val_dataloader())) == len(dm.records["val"])


def test_each_loader_worker_computes_on_one_thread():
    class Threads(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.get_num_threads()

    from videorec.data.datasets import seed_worker

    loader = torch.utils.data.DataLoader(Threads(), num_workers=1, worker_init_fn=seed_worker, batch_size=2)
    assert next(iter(loader)).tolist() == [1, 1]


def test_repeated_augmentation_keeps_the_ddp_step_counts(tmp_path, monkeypatch):
    """Two ranks, 7 videos, num_samples=2, batch_size=4 clips: every rank runs ceil(ceil(7 / 2) / 2) = 2 steps of
    2 videos x 2 clips, each epoch covers every video (padded to 8, as DistributedSampler pads), and each video's
    clips stay together in one step. (The ranks' loaders are built in this process with the rank and world size the
    datamodule reads from the process group; tests/test_ddp_data.py runs the same samplers in real gloo ranks.)"""
    import videorec.data.datamodule as datamodule

    root = write_kinetics_dataset(tmp_path / "k", CLASSES, per_class=3, num_frames=8, size=(24, 32))
    lines = (root / "train.txt").read_text().splitlines()[:7]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    dm = KineticsDataModule(root=str(root), **SMALL, num_samples=2)
    dm.setup("fit")
    loaders = []
    for rank in range(2):
        monkeypatch.setattr(datamodule, "dist_info", lambda rank=rank: (rank, 2))
        loaders.append(dm.train_dataloader())
    assert [len(loader) for loader in loaders] == [2, 2]
    orders = []
    for epoch in range(2):
        steps = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
            steps.append([b["video_index"].tolist() for b in loader])
        assert [len(s) for s in steps] == [2, 2]  # the same number of steps on both ranks
        assert all(len(batch) == 4 for s in steps for batch in s)  # batch_size still counts clips
        assert all(batch[0::2] == batch[1::2] for s in steps for batch in s)  # 2 clips of each video, together
        videos = [v for s in steps for batch in s for v in batch[0::2]]
        assert len(videos) == 8 and set(videos) == set(range(7))  # every video; one repeated to pad 7 to 8
        orders.append(videos)
    assert orders[0] != orders[1]  # a new order each epoch
