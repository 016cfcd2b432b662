"""Distributed guarantees with 2 ranks (gloo, CPU, spawned processes) and 2 DataLoader workers each, on lists whose
length does not divide the world size:

- training: every rank runs the same number of steps per epoch, and a new epoch gives a new order;
- val / test: every video, and every clip x crop view, is evaluated exactly once across ranks (no padding duplicates).

The first test drives the dataloaders by hand (train, val and test); the second runs a Lightning `ddp_spawn` fit (train
and val) with the default `use_distributed_sampler=True`, showing that Lightning keeps our samplers.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from video_factory import write_kinetics_dataset

from videorec.data import KineticsDataModule

CLASSES = ["a", "b", "c"]
NUM_VIDEOS = 7  # 3 classes: 3 + 2 + 2 videos, odd on purpose
CLIPS, CROPS = 2, 3
SETTINGS = dict(
    class_names=CLASSES,
    num_frames=2,
    sampling_rate=2,
    crop_size=16,
    eval_short_side=16,
    batch_size=2,
    num_workers=2,
    eval_clips=CLIPS,
    eval_crops=CROPS,
    # A spawned rank's workers would be spawned too (a fresh interpreter importing torch per loader and epoch):
    # fork them, as under torchrun.
    multiprocessing_context="fork",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = write_kinetics_dataset(tmp_path_factory.mktemp("ddp"), CLASSES, per_class=3, num_frames=6, size=(16, 24))
    for split in ("train", "val"):  # drop two lines: 7 videos
        lines = (root / f"{split}.txt").read_text().splitlines()
        (root / f"{split}.txt").write_text("\n".join(lines[:NUM_VIDEOS]) + "\n")
    return root


def _views(batches) -> list[list[int]]:
    return [
        [int(v), int(c), int(k)]
        for b in batches
        for v, c, k in zip(b["video_index"], b["clip_index"], b["crop_index"], strict=True)
    ]


def _worker(rank: int, world: int, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=rank, world_size=world)
    try:
        dm = KineticsDataModule(root=root, **SETTINGS)
        dm.setup("fit")
        dm.setup("test")
        result: dict = {"train": []}
        loader = dm.train_dataloader()
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            result["train"].append([int(i) for b in loader for i in b["video_index"]])
        result["steps"] = len(loader)
        result["val"] = _views(dm.val_dataloader())
        result["test"] = _views(dm.test_dataloader())
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _check_train(results: list[dict]) -> None:
    """Equal step counts per rank, each epoch covers every video, and the order changes between epochs."""
    assert len({len(r["train"][0]) for r in results}) == 1 and len({len(r["train"][1]) for r in results}) == 1
    for epoch in range(2):
        assert set().union(*(r["train"][epoch] for r in results)) == set(range(NUM_VIDEOS))
    assert [r["train"][0] for r in results] != [r["train"][1] for r in results]


def _check(results: list[dict]) -> None:
    _check_train(results)
    # evaluation: exactly once across ranks
    val = sorted(v for r in results for v in r["val"])
    assert val == [[v, 0, 0] for v in range(NUM_VIDEOS)]
    test = sorted(v for r in results for v in r["test"])
    assert test == [[v, c, k] for v in range(NUM_VIDEOS) for c in range(CLIPS) for k in range(CROPS)]


def test_samplers_across_two_ranks(root, tmp_path):
    mp.spawn(_worker, args=(2, str(root), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["steps"] == results[1]["steps"] == 2  # ceil(7 / 2) = 4 clips per rank, batches of 2
    _check(results)


class _Recorder(L.LightningModule):
    """Records what each rank sees; writes it to `out/rank<r>.json` (ddp_spawn returns no module state)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.head = nn.Linear(3, len(CLASSES))
        self.seen: dict = {"train": [], "val": []}

    def on_train_epoch_start(self) -> None:
        self.seen["train"].append([])

    def training_step(self, batch, batch_idx):
        self.seen["train"][-1] += batch["video_index"].tolist()
        return F.cross_entropy(self.head(batch["video"].mean(dim=(2, 3, 4))), batch["label"])

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.seen["val"].append([])

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.seen["val"][-1] += _views([batch])

    def on_fit_end(self) -> None:
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_ddp_keeps_our_samplers(root, tmp_path):
    dm = KineticsDataModule(root=str(root), **SETTINGS)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = _Recorder(str(tmp_path))
    trainer.fit(model, datamodule=dm)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    _check_train(seen)
    for epoch in range(2):  # each validation epoch evaluates every video once
        assert sorted(v for s in seen for v in s["val"][epoch]) == [[v, 0, 0] for v in range(NUM_VIDEOS)]
