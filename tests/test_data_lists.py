"""Kinetics list formats, class lists and setup-time errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from video_factory import write_kinetics_dataset

from videorec.data import KineticsDataModule, ListFileError, read_video_list
from videorec.data.kinetics import load_class_names

CLASSES = ["air drumming", "skiing (not slalom or crosscountry)", "massaging person's head"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kinetics")
    return {
        fmt: write_kinetics_dataset(base / fmt, CLASSES, per_class=2, splits=("train",), num_frames=4, fmt=fmt)
        for fmt in ("space", "comma", "official", "tree")
    }


@pytest.mark.parametrize("fmt", ["space", "comma", "official", "tree"])
def test_every_list_format_gives_the_same_videos(datasets, fmt):
    root = datasets[fmt]
    source = {"space": "train.txt", "comma": "train.csv", "official": "train.csv", "tree": "train"}[fmt]
    records = read_video_list(root / source, CLASSES, video_root=root)
    assert sorted(r.label for r in records) == [0, 0, 1, 1, 2, 2]
    for record in records:
        assert Path(record.path).is_file(), record.path
        assert Path(record.path).parent.name == CLASSES[record.label].replace(" ", "_")


def test_datamodule_finds_default_lists(tmp_path):
    write_kinetics_dataset(tmp_path, CLASSES, per_class=1, splits=("train", "val"), num_frames=4, fmt="comma")
    dm = KineticsDataModule(root=str(tmp_path), class_names=CLASSES, num_workers=0)
    dm.setup()
    assert [len(dm.records[s]) for s in ("train", "val", "test")] == [3, 3, 3]
    assert dm.records["test"] == dm.records["val"]  # no test list: the val list


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a.mp4 0\nb.mp4 1\nc.mp4\n", 3, "expected '<path> <label>'"),
        ("a.mp4 0\n\n# comment\nb.mp4 7\n", 4, "label 7 is outside the class list"),
        ("a.mp4,0\nb.mp4,-1\n", 2, "label -1 is outside"),
        ("a.mp4 0\nb.mp4 curling\n", 2, "label 'curling' is not in the class list"),
        (
            "label,youtube_id,time_start,time_end,split\nair drumming,abc,1,11,train\nyodeling,xyz,0,10,train\n",
            3,
            "label 'yodeling' is not in the class list",
        ),
        ("label,youtube_id,time_start,time_end,split\nair drumming,abc,one,11,train\n", 2, "malformed"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path / "list.txt", text)
    with pytest.raises(ListFileError) as info:
        read_video_list(path, CLASSES)
    assert f"{path}:{line}" in str(info.value) and message in str(info.value)


def test_labels_by_name_in_any_spelling(tmp_path):
    path = _write(tmp_path / "l.txt", "a.mp4 Air_Drumming\nb.mp4 skiing_(not_slalom_or_crosscountry)\n")
    assert [r.label for r in read_video_list(path, CLASSES)] == [0, 1]


def test_unknown_class_folder_is_an_error(tmp_path):
    (tmp_path / "train" / "yodeling").mkdir(parents=True)
    with pytest.raises(ListFileError, match="yodeling"):
        read_video_list(tmp_path / "train", CLASSES)


def test_missing_list_is_a_clear_error(tmp_path):
    dm = KineticsDataModule(root=str(tmp_path), class_names=CLASSES)
    with pytest.raises(FileNotFoundError, match="no train list"):
        dm.setup("fit")


def test_shipped_class_lists():
    k400 = load_class_names("k400")
    assert len(k400) == 400 and k400[:2] == ["abseiling", "air drumming"] and k400 == sorted(k400)
    from torchvision.models.video import MViT_V1_B_Weights

    assert k400 == MViT_V1_B_Weights.KINETICS400_V1.meta["categories"]  # the canonical order
    k700 = load_class_names("k700")
    assert len(k700) == len(set(k700)) == 700 and k700 == sorted(k700)
    dm = KineticsDataModule(root="/nonexistent", variant="k700")
    assert dm.num_classes == 700  # valid right after construction
    with pytest.raises(FileNotFoundError, match="class_names_file"):
        KineticsDataModule(root="/nonexistent", variant="k600")


def test_paths_with_spaces_and_tabs(tmp_path):
    path = _write(tmp_path / "l.txt", "my video.mp4\t1\nsome dir/clip 2.mp4   2\n/abs/a b.mp4,0\n")
    records = read_video_list(path, CLASSES, video_root="/data")
    assert [(r.path, r.label) for r in records] == [
        ("/data/my video.mp4", 1),
        ("/data/some dir/clip 2.mp4", 2),
        ("/abs/a b.mp4", 0),
    ]


@pytest.mark.parametrize("fmt", ["space", "comma", "official"])
def test_lists_as_spreadsheets_save_them(datasets, fmt, tmp_path):
    """A byte-order mark, CRLF line ends, a header row, blank lines and trailing spaces: the same videos."""
    root = datasets[fmt]
    source = root / ("train.txt" if fmt == "space" else "train.csv")
    expected = read_video_list(source, CLASSES)
    lines = source.read_text().splitlines()
    if fmt != "official":  # the official csv has its header already
        lines = [("path label" if fmt == "space" else "path,label"), *lines]
    messy = "\r\n".join(f"{line}   " if i % 2 else line for i, line in enumerate(lines))
    messy = messy.replace(lines[1], f"{lines[1]}\r\n\r\n   ", 1) + "\r\n\r\n"
    copy = root / f"messy_{source.name}"
    copy.write_bytes(b"\xef\xbb\xbf" + messy.encode())
    assert read_video_list(copy, CLASSES) == expected


def test_a_header_row_is_only_skipped_at_the_top(tmp_path):
    path = _write(tmp_path / "l.csv", "video,class\na.mp4,0\npath,label\n")
    with pytest.raises(ListFileError) as info:  # a header in the middle is a malformed line, named
        read_video_list(path, CLASSES)
    assert f"{path}:3" in str(info.value) and "label 'label' is not in the class list" in str(info.value)
    assert [r.label for r in read_video_list(_write(tmp_path / "ok.csv", "video,class\na.mp4,0\n"), CLASSES)] == [0]
