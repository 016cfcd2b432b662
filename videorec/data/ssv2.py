"""Something-Something v2: the official label json files with the webm videos or extracted frame folders.

Layout (every piece can be pointed elsewhere):

    root/labels/something-something-v2-labels.json       {"<template without brackets>": "<index>", ...}
    root/labels/something-something-v2-train.json        [{"id": "78687", "template": "Holding [something] ...", ...}]
    root/labels/something-something-v2-validation.json
    root/20bn-something-something-v2/<id>.webm           (or root/videos/<id>.webm)
    root/frames/<id>/<frame images>                      (with data.frame_dir, instead of the videos)

Sampling is segment based (see `sampling.segment_indices`). Horizontal flips are off by default: "from left to right"
and "from right to left" are different classes. `flip=True` flips with the left/right classes swapped; a class that
names a side without a mirrored partner is never flipped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .datamodule import VideoDataModule
from .datasets import ListFileError, VideoRecord

__all__ = ["SSv2DataModule", "mirrored_name"]

PREFIX = "something-something-v2"
SPLIT_FILES = {"train": f"{PREFIX}-train.json", "val": f"{PREFIX}-validation.json", "test": f"{PREFIX}-validation.json"}


def mirrored_name(name: str) -> str:
    """The class name with "left" and "right" swapped (whole words, case kept)."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
    return re.sub(r"\b(left|right|Left|Right)\b", lambda m: swap[m.group(0)], name)


def _template_key(template: str) -> str:
    return template.replace("[", "").replace("]", "").strip()


class SSv2DataModule(VideoDataModule):
    """Something-Something v2 (174 classes).

    Args:
        root: dataset root.
        labels_dir: folder of the json files (default: root/labels if it exists, else root).
        video_dir: folder of `<id>.webm` (default: root/20bn-something-something-v2, else root/videos, else root).
        frame_dir: folder of `<id>/` frame folders; when set, frames are read instead of videos.
        train_json: train annotation file (default: the official name in labels_dir).
        val_json: validation annotation file.
        test_json: test annotation file with labels (default: the validation file).
        video_suffix: suffix of the video files.
        flip: horizontal flips in training, swapping the left/right classes (off by default).
        **kwargs: the shared `VideoDataModule` arguments (sampling is segment based: `sampling_rate` is unused).
    """

    sampling = "segment"

    def __init__(
        self,
        root: str,
        labels_dir: str | None = None,
        video_dir: str | None = None,
        frame_dir: str | None = None,
        train_json: str | None = None,
        val_json: str | None = None,
        test_json: str | None = None,
        video_suffix: str = ".webm",
        flip: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(flip=flip, **kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.labels_dir = self._pick(labels_dir, ("labels", "."))
        self.video_dir = self._pick(video_dir, ("20bn-something-something-v2", "videos", "."))
        self.frame_dir = self._pick(frame_dir, ()) if frame_dir else None
        self.split_files = {
            split: self._pick(given, ()) if given else self.labels_dir / SPLIT_FILES[split]
            for split, given in (("train", train_json), ("val", val_json), ("test", test_json))
        }
        self.video_suffix = video_suffix
        labels_file = self.labels_dir / f"{PREFIX}-labels.json"
        if not labels_file.is_file():
            raise FileNotFoundError(f"{labels_file}: SSv2 label file not found (set data.labels_dir)")
        mapping = json.loads(labels_file.read_text())
        try:
            by_index = sorted((int(index), name) for name, index in mapping.items())
        except (TypeError, ValueError) as err:
            raise ListFileError(f"{labels_file}: expected {{template: index}}: {err}") from err
        if [i for i, _ in by_index] != list(range(len(by_index))):
            raise ListFileError(f"{labels_file}: class indices are not 0..{len(by_index) - 1}")
        self.class_names = [name for _, name in by_index]
        self._lookup = {name: i for i, name in enumerate(self.class_names)}

    def _pick(self, given: str | None, defaults: tuple[str, ...]) -> Path:
        if given:
            path = Path(os.path.expanduser(given))
            return path if path.is_absolute() else self.root / path
        return next((self.root / name for name in defaults if (self.root / name).is_dir()), self.root)

    def flip_labels(self) -> dict[int, int | None]:
        mapping: dict[int, int | None] = {}
        for i, name in enumerate(self.class_names):
            if re.search(r"\b(left|right)\b", name, flags=re.IGNORECASE):
                mapping[i] = self._lookup.get(mirrored_name(name))  # None: no partner, never flip
        return mapping

    def load_records(self, split: str) -> list[VideoRecord]:
        source = self.split_files[split]
        if not source.is_file():
            raise FileNotFoundError(f"{source}: SSv2 {split} annotations not found")
        try:
            entries = json.loads(source.read_text())
        except json.JSONDecodeError as err:
            raise ListFileError(f"{source}:{err.lineno}: invalid json: {err.msg}") from err
        if not isinstance(entries, list):
            raise ListFileError(f"{source}: expected a json list of {{'id', 'template', ...}} entries")
        records = []
        for number, entry in enumerate(entries, start=1):
            where = f"{source}: entry {number}"
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise ListFileError(f"{where}: expected an object with 'id' and 'template', got {str(entry)[:80]!r}")
            key = _template_key(str(entry["template"]))
            if key not in self._lookup:
                raise ListFileError(f"{where} (id {entry['id']}): template {key!r} is not in the label file")
            video_id = str(entry["id"])
            path = self.frame_dir / video_id if self.frame_dir else self.video_dir / f"{video_id}{self.video_suffix}"
            records.append(VideoRecord(str(path), self._lookup[key]))
        if not records:
            raise ListFileError(f"{source}: no videos in the {split} annotations")
        return records
