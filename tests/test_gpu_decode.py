"""GPU decoding: data.decode_device=cuda decodes with NVDEC through torchcodec and keeps the frames on the GPU.

The CPU tests check the configuration (errors naming the keys, the value reaching the decoder, the loader in the main
process) and the CPU-fallback report; the tests marked `gpu` decode on a CUDA device.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from video_factory import decoded_frame_index, frame_id_frames, write_kinetics_dataset, write_video

from videorec.data import datasets, decoding
from videorec.data.decoding import check_decode_device, check_decoder, cpu_fallbacks, read_frames
from videorec.data.transforms import EvalClipTransform, TrainClipTransform


def _torchcodec_available() -> bool:
    try:
        check_decoder("torchcodec")
    except RuntimeError:
        return False
    return True


needs_torchcodec = pytest.mark.skipif(not _torchcodec_available(), reason="torchcodec or FFmpeg's libraries missing")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CLASSES = ["abseiling", "air drumming", "answering questions"]  # the first K400 classes


@pytest.fixture(autouse=True)
def _fresh_fallback_report(monkeypatch):
    monkeypatch.setattr(decoding, "_CPU_FALLBACKS", {})


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("gpu") / "ids.mp4", frame_id_frames(24, 64, 96), gop=5)


def test_decode_device_errors_name_the_keys(monkeypatch):
    with pytest.raises(ValueError, match=r"data.decode_device must be one of \('cpu', 'cuda'\), got 'gpu'"):
        check_decode_device("torchcodec", "gpu")
    with pytest.raises(ValueError, match="data.decode_device=cuda .* set data.decoder=torchcodec .*'pyav'"):
        check_decode_device("pyav", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="data.decode_device=cuda needs a CUDA device"):
        check_decode_device("torchcodec", "cuda")
    check_decode_device("pyav", "cpu")  # the default needs nothing


def test_datamodule_rejects_cuda_decoding_with_another_decoder(tmp_path):
    root = write_kinetics_dataset(tmp_path / "k", CLASSES, per_class=1, num_frames=4)
    cfg = compose_config("train", ["data=k400", f"data.root={root}", "data.decode_device=cuda"], tmp_path / "run")
    assert cfg.data.decoder == "pyav"  # the shipped default
    with pytest.raises(InstantiationException, match="data.decode_device=cuda .* data.decoder=torchcodec"):
        instantiate(cfg.data)


@needs_torchcodec
def test_decode_device_reaches_the_decoder_and_the_loader_runs_in_the_main_process(tmp_path, monkeypatch, caplog):
    root = write_kinetics_dataset(tmp_path / "k", CLASSES, per_class=1, num_frames=12)
    overrides = ["data=k400", f"data.root={root}", "data.decoder=torchcodec", "data.decode_device=cuda"]
    cfg = compose_config("train", [*overrides, "data.num_workers=3", "data.pin_memory=true"], tmp_path / "run")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the check only; nothing runs on a GPU here
    with caplog.at_level(logging.WARNING, logger="videorec.data.datamodule"):
        dm = instantiate(cfg.data)
    assert (dm.num_workers, dm.pin_memory, dm.decode_device) == (0, False, "cuda")
    assert "data.num_workers 3 -> 0" in caplog.text
    seen = []

    def recording_read_frames(path, choose, decoder, fallback, threads, device):
        seen.append((decoder, device))
        return read_frames(path, choose, decoder, fallback, threads)  # decoded on the CPU for this test

    monkeypatch.setattr(datasets, "read_frames", recording_read_frames)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory
    batch = next(iter(loader))
    assert batch["skipped"] == [] and batch["video"].shape[0] > 0
    assert seen and set(seen) == {("torchcodec", "cuda")}


class _FellBack:
    """What torchcodec's `cpu_fallback` says when NVDEC could not take a file."""

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        return "[CUDA] Fallback status: Falling back due to: Video not supported"


@needs_torchcodec
def test_torchcodec_cpu_fallback_is_logged_once_and_counted(clip_file, tmp_path, monkeypatch, caplog):
    import torchcodec.decoders

    real = torchcodec.decoders.VideoDecoder
    devices = []

    class FallingBack(real):  # NVDEC refuses the file: torchcodec decodes it on the CPU
        def __init__(self, source, **kwargs):
            devices.append(kwargs.pop("device"))
            super().__init__(source, device="cpu", **kwargs)

        @property
        def cpu_fallback(self):
            return _FellBack()

    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", FallingBack)
    other = write_video(tmp_path / "other.mp4", frame_id_frames(8, 32, 32))
    wanted = np.array([4, 1, 1, 20])
    with caplog.at_level(logging.WARNING, logger="videorec.data.decoding"):
        for path in (clip_file, clip_file, other):
            frames = decoding._read_torchcodec(str(path), lambda n: np.minimum(wanted, n - 1), 1, "cuda:0")
    assert devices == ["cuda:0"] * 3
    assert [decoded_frame_index(f.numpy()) for f in frames] == [4, 1, 1, 7]
    assert cpu_fallbacks() == {str(p): f"torchcodec: {_FellBack()}" for p in (clip_file, other)}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("decoded on the CPU, not the GPU" in m for m in messages)
    assert str(clip_file) in messages[0] and "Video not supported" in messages[0] and "2 such file(s)" in messages[1]


@pytest.mark.gpu
@needs_cuda
@needs_torchcodec
def test_nvdec_frames_match_the_cpu_decode_and_stay_on_the_gpu(clip_file):
    wanted = np.array([3, 0, 7, 7, 23, 12])
    gpu = read_frames(clip_file, lambda n: wanted, "torchcodec", fallback=None, device="cuda")
    cpu = read_frames(clip_file, lambda n: wanted, "torchcodec", fallback=None)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    assert [decoded_frame_index(f.cpu().numpy()) for f in gpu] == wanted.tolist()
    assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 3  # NVDEC's colour conversion differs slightly
    assert cpu_fallbacks() == {}


@pytest.mark.gpu
@needs_cuda
@needs_torchcodec
def test_transforms_run_on_the_gpu_frames(clip_file):
    frames = read_frames(clip_file, lambda n: np.arange(8), "torchcodec", fallback=None, device="cuda")
    train = TrainClipTransform(32, randaug_n=2, random_erasing=1.0)(frames)
    evaluated = EvalClipTransform(32, 36)(frames, crop_index=2, num_crops=3)
    on_cpu = EvalClipTransform(32, 36)(frames.cpu(), crop_index=2, num_crops=3)
    assert train.device.type == evaluated.device.type == "cuda"
    assert train.shape == evaluated.shape == (3, 8, 32, 32)
    assert torch.allclose(evaluated.cpu(), on_cpu, atol=0.05)


@pytest.mark.gpu
@needs_cuda
@needs_torchcodec
def test_a_training_batch_is_decoded_and_augmented_on_the_gpu(tmp_path):
    root = write_kinetics_dataset(tmp_path / "k", CLASSES, per_class=2, num_frames=12)
    overrides = ["data=k400", f"data.root={root}", "data.decoder=torchcodec", "data.decode_device=cuda"]
    cfg = compose_config("train", [*overrides, "data.batch_size=4", "data.num_frames=4", "data.crop_size=32"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].device.type == "cuda" and batch["video"].shape == (4, 3, 4, 32, 32)
    assert batch["skipped"] == [] and cpu_fallbacks() == {}
