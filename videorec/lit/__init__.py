"""Lightning systems: the video classifier, its optimiser setup and multi-view aggregation."""

from .classifier import VideoClassifier, aggregate_views

__all__ = ["VideoClassifier", "aggregate_views"]
