"""Kinetics (400 / 600 / 700) list files in every format users have, and the Kinetics datamodule.

Accepted list formats (detected per file):

- `<path> <label>` lines, whitespace separated (pytorchvideo `LabeledVideoPaths`);
- `<path>,<label>` lines (PySlowFast / UniFormer lists);
- the official csv with a `label,youtube_id,time_start,time_end,split` header, mapped onto
  `<youtube_id>_<start:06d>_<end:06d>.mp4` files found anywhere under the root (`root/<split>/<class>/...`,
  `root/<split>/...`, flat: all work);
- a folder tree `root/<class>/<video>` (pass the folder as the list).

A label is an integer index into the class list or a class name (any spelling: case, `_` for spaces, punctuation
dropped). Relative paths are taken from `video_root` (default: the data root). A malformed line or an unknown label
raises `ListFileError` naming the file and line at setup.

We parse lists ourselves rather than with pytorchvideo's `LabeledVideoPaths` (which knows only the first format,
reports no line numbers and sorts folder classes alphabetically instead of by the canonical list).
"""

from __future__ import annotations

import csv
import functools
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .datamodule import VideoDataModule
from .datasets import VIDEO_SUFFIXES, ListFileError, VideoRecord

__all__ = ["KineticsDataModule", "ListFileError", "load_class_names", "normalise_name", "read_video_list"]

LABEL_FILES = {"k400": "kinetics400.txt", "k600": "kinetics600.txt", "k700": "kinetics700.txt"}
OFFICIAL_COLUMNS = {"label", "youtube_id", "time_start", "time_end"}


def normalise_name(name: str) -> str:
    """A class-name key that survives `air_drumming`, `Air Drumming` and `"air drumming"`."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def load_class_names(source: str | os.PathLike) -> list[str]:
    """Class names, one a line, from a file, or from a shipped list ("k400", "k600", "k700")."""
    if str(source) in LABEL_FILES:
        ref = resources.files("videorec.data") / "labels" / LABEL_FILES[str(source)]
        if not ref.is_file():
            raise FileNotFoundError(
                f"no class list is shipped for {source!r}: set data.class_names_file to the class names, one a line, "
                "in the alphabetical order of the official label names"
            )
        text = ref.read_text()
    else:
        text = Path(source).read_text()
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names


def _label_index(label: str, lookup: dict[str, int], num_classes: int, where: str) -> int:
    label = label.strip().strip('"')
    if re.fullmatch(r"-?\d+", label):
        index = int(label)
        if not 0 <= index < num_classes:
            raise ListFileError(f"{where}: label {index} is outside the class list (0..{num_classes - 1})")
        return index
    key = normalise_name(label)
    if key not in lookup:
        raise ListFileError(f"{where}: label {label!r} is not in the class list ({num_classes} classes)")
    return lookup[key]


@functools.lru_cache(maxsize=4)
def _index_videos(root: Path) -> dict[str, str]:
    """stem -> path of every video under `root`, for the official csv's youtube-id names (one walk per root and
    process, shared by the splits: a Kinetics tree holds hundreds of thousands of files)."""
    found: dict[str, str] = {}
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            if name.lower().endswith(VIDEO_SUFFIXES):
                found.setdefault(Path(name).stem, os.path.join(folder, name))
    return found


def read_video_list(
    source: str | os.PathLike, class_names: Sequence[str], video_root: str | os.PathLike | None = None
) -> list[VideoRecord]:
    """Labelled videos from a list file (any accepted format) or a `<class>/<video>` folder tree.

    Args:
        source: the list file, or the root of a class-folder tree.
        class_names: the class list; labels are indices into it or names in it.
        video_root: base of relative paths (default: the list file's folder).

    Raises:
        ListFileError: the file and line of a malformed entry or an unknown label.
    """
    source = Path(source)
    lookup = {normalise_name(name): i for i, name in enumerate(class_names)}
    if source.is_dir():
        return _read_tree(source, lookup, len(class_names))
    if not source.is_file():
        raise ListFileError(f"{source}: list file not found")
    base = Path(video_root) if video_root is not None else source.parent
    # utf-8-sig: a byte-order mark (spreadsheet exports) is dropped; splitlines takes CRLF and LF alike
    lines = source.read_text(encoding="utf-8-sig").splitlines()
    first = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    header = {column.strip().strip('"') for column in first.split(",")}
    if header >= OFFICIAL_COLUMNS:
        return _read_official_csv(source, lines, lookup, len(class_names), base)
    records = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{source}:{number}"
        if "," in text:
            path, _, label = text.rpartition(",")
        else:
            match = re.fullmatch(r"(.+?)\s+(\S+)", text)  # the path may hold spaces, the label may not
            path, label = match.groups() if match else ("", text)
        path, label = path.strip().strip('"'), label.strip().strip('"')
        if not records and _is_header(path, label, lookup):
            continue  # a header row such as "path,label"
        if not path or not label:
            raise ListFileError(f"{where}: expected '<path> <label>' or '<path>,<label>', got {text!r}")
        records.append(VideoRecord(str(base / path), _label_index(label, lookup, len(class_names), where)))
    return records


HEADER_WORDS = {"label", "labels", "class", "class_name", "classname", "category", "target", "label_id", "class_id"}


def _is_header(path: str, label: str, lookup: dict[str, int]) -> bool:
    """A first line whose label column is a column name (and no class of the list), e.g. "path,label"."""
    return label.lower() in HEADER_WORDS and normalise_name(label) not in lookup and not label.isdigit()


def _read_official_csv(
    source: Path, lines: list[str], lookup: dict[str, int], num_classes: int, base: Path
) -> list[VideoRecord]:
    index = _index_videos(base)
    records = []
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]  # blank lines skipped
    reader = csv.DictReader([line for _, line in numbered])
    for (number, _), row in zip(numbered[1:], reader, strict=False):
        where = f"{source}:{number}"
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
        try:
            youtube_id = row["youtube_id"].strip()
            name = f"{youtube_id}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        except (TypeError, ValueError, AttributeError) as err:
            raise ListFileError(f"{where}: malformed official Kinetics row {row}: {err}") from err
        label = _label_index(row["label"] or "", lookup, num_classes, where)
        records.append(VideoRecord(index.get(name, str(base / f"{name}.mp4")), label))
    return records


def _read_tree(root: Path, lookup: dict[str, int], num_classes: int) -> list[VideoRecord]:
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        key = normalise_name(folder.name)
        if key not in lookup:
            raise ListFileError(f"{folder}: class folder {folder.name!r} is not in the class list")
        for video in sorted(folder.iterdir()):
            if video.suffix.lower() in VIDEO_SUFFIXES or video.is_dir():
                records.append(VideoRecord(str(video), lookup[key]))
    return records


class KineticsDataModule(VideoDataModule):
    """Kinetics-400/600/700 (or any dataset in the same list formats).

    Args:
        root: dataset root.
        variant: "k400", "k600" or "k700": the shipped canonical class list (its order is the label order).
        class_names_file: a class list of one's own (one name a line), instead of `variant`.
        class_names: the class list itself (wins over `class_names_file` and `variant`).
        train_list: list file or class-folder tree; None: the first of `train.csv`, `train.txt`, `train_list.txt`,
            `annotations/train.csv`, `train/` under the root.
        val_list: likewise with `val` / `validate` names.
        test_list: likewise with `test` names, falling back to the val list.
        video_root: base of relative paths in list files (default: root).
        **kwargs: the shared `VideoDataModule` arguments.
    """

    DEFAULT_LISTS = {
        "train": ("train.csv", "train.txt", "train_list.txt", "annotations/train.csv", "train"),
        "val": (
            "val.csv",
            "val.txt",
            "val_list.txt",
            "validate.csv",
            "annotations/val.csv",
            "annotations/validate.csv",
            "val",
            "validate",
        ),
        "test": ("test.csv", "test.txt", "test_list.txt", "annotations/test.csv", "test"),
    }

    def __init__(
        self,
        root: str,
        variant: str | None = "k400",
        class_names_file: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        video_root: str | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.video_root = Path(os.path.expanduser(video_root)) if video_root else self.root
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        if class_names:
            self.class_names = [str(name) for name in class_names]
        elif class_names_file:
            self.class_names = load_class_names(os.path.expanduser(class_names_file))
        elif variant:
            self.class_names = load_class_names(variant)
        else:
            tree = self.list_path("train", required=False)
            if tree is None or not tree.is_dir():
                raise ValueError("set data.variant (k400/k600/k700) or data.class_names_file, or a class-folder tree")
            self.class_names = sorted(p.name for p in tree.iterdir() if p.is_dir())

    def list_path(self, split: str, required: bool = True) -> Path | None:
        """The list file (or class-folder tree) of `split`: the configured one, else the first default found."""
        given = self.lists[split]
        if given:
            path = Path(os.path.expanduser(given))
            return path if path.is_absolute() else self.root / path
        candidates = self.DEFAULT_LISTS[split] + (self.DEFAULT_LISTS["val"] if split == "test" else ())
        for name in candidates:
            if (self.root / name).exists():
                return self.root / name
        if required:
            raise FileNotFoundError(
                f"no {split} list under {self.root} (looked for {', '.join(candidates)}); set data.{split}_list"
            )
        return None

    def load_records(self, split: str) -> list[VideoRecord]:
        records = read_video_list(self.list_path(split), self.class_names, self.video_root)
        if not records:
            raise ListFileError(f"{self.list_path(split)}: no videos in the {split} list")
        return records
