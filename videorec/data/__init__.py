"""Video data: datamodules (synthetic, Kinetics, Something-Something v2), clip sampling, decoding, transforms.

`hydra.utils.instantiate(cfg.data)` builds one of the datamodules below; see `datamodule.py` for the batch contract.
"""

from .callbacks import SkippedVideos, SkippedVideosCallback
from .datamodule import VideoDataModule
from .datasets import (
    VIDEO_SUFFIXES,
    EvalDistributedSampler,
    ListFileError,
    TrainDistributedSampler,
    VideoClipDataset,
    VideoCollate,
    VideoRecord,
)
from .decoding import VideoDecodeError, read_frames
from .kinetics import KineticsDataModule, read_video_list
from .ssv2 import SSv2DataModule
from .synthetic import SyntheticDataModule

__all__ = [
    "VIDEO_SUFFIXES",
    "EvalDistributedSampler",
    "KineticsDataModule",
    "ListFileError",
    "SSv2DataModule",
    "SkippedVideos",
    "SkippedVideosCallback",
    "SyntheticDataModule",
    "TrainDistributedSampler",
    "VideoClipDataset",
    "VideoCollate",
    "VideoDataModule",
    "VideoDecodeError",
    "VideoRecord",
    "read_frames",
    "read_video_list",
]
