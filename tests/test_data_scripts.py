"""scripts/build_lists.py (clean lists and broken-video reports) and a smoke run of scripts/bench_decode.py."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

from video_factory import write_kinetics_dataset, write_ssv2_dataset, write_text_as_video, write_truncated

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # importable by name in the checking processes too
    return importlib.import_module(name)


def test_build_kinetics_lists(tmp_path):
    classes = ["abseiling", "air drumming"]
    root = write_kinetics_dataset(tmp_path / "k", classes, per_class=2, num_frames=6, fmt="official")
    good = sorted(root.glob("train/*/*.mp4"))
    write_truncated(good[0], good[1])  # overwrite one train video with a truncated copy of another
    write_text_as_video(sorted(root.glob("val/*/*.mp4"))[0])
    (sorted(root.glob("val/*/*.mp4"))[1]).unlink()
    out = tmp_path / "lists"
    # as a command, with its process pool (forked from a fresh process, not from this multi-threaded one)
    command = [sys.executable, str(SCRIPTS / "build_lists.py"), "kinetics", "--root", str(root), "--out", str(out)]
    subprocess.run([*command, "--workers", "2"], check=True, capture_output=True, timeout=300)
    train = (out / "train.txt").read_text().splitlines()
    assert len(train) == 3 and all(line.startswith("train/") for line in train)
    assert [line.split()[-1] for line in train] == ["0", "1", "1"]
    assert (out / "train_broken.txt").read_text().startswith(str(good[0]))
    assert len((out / "val.txt").read_text().splitlines()) == 2
    broken = (out / "val_broken.txt").read_text()
    assert "no such file" in broken and "not a video container" in broken  # the missing and the text file
    assert "truncated" in (out / "train_broken.txt").read_text()
    assert not (out / "test.txt").exists()  # no test list: the val fallback is not checked twice
    assert (out / "classes.txt").read_text().splitlines()[:2] == ["abseiling", "air drumming"]


def test_build_ssv2_lists(tmp_path):
    root = write_ssv2_dataset(tmp_path / "ssv2", per_class=1)
    entries = json.loads((root / "labels" / "something-something-v2-train.json").read_text())
    (root / "20bn-something-something-v2" / f"{entries[1]['id']}.webm").write_bytes(b"")
    out = tmp_path / "clean"
    _load("build_lists").main(["ssv2", "--root", str(root), "--out", str(out), "--workers", "1"])
    kept = json.loads((out / "something-something-v2-train.json").read_text())
    assert [e["id"] for e in kept] == [e["id"] for i, e in enumerate(entries) if i != 1]
    assert len(json.loads((out / "something-something-v2-validation.json").read_text())) == 4
    assert (out / "something-something-v2-labels.json").exists()
    assert "0 bytes" in (out / "train_broken.txt").read_text()


def test_bench_decode_smoke():
    args = ["--sizes", "64x48", "--seconds", "1", "--clips", "2", "--decoders", "decord,pyav", "--threads", "0,1"]
    rates = _load("bench_decode").main([*args, "--bound"])
    assert {method for _, method in rates} == {
        "pytorchvideo EncodedVideo (decord)",
        "videorec decord (auto threads)",
        "videorec decord (1 thread)",
        "videorec pyav (auto threads)",
        "videorec pyav (1 thread)",
        "bound: decord decode only (auto threads)",
        "bound: decord decode only (1 thread)",
    }
    assert all(rate > 0 for rate in rates.values())
