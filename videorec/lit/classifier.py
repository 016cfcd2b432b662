"""``VideoClassifier``: the LightningModule that trains and evaluates any backbone of the zoo.

It knows nothing about a particular architecture: the backbone is built with ``create_model`` from its registry name
and plain keyword arguments, all stored as hyperparameters, so ``VideoClassifier.load_from_checkpoint(path)`` rebuilds
the model without Hydra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..models import create_model
from ..models.checkpoints import strip_compiled
from ..models.layers import channels_last_weights, match_grad_layouts
from ..utils.profile import flop_counter
from .optim import apply_layer_decay, build_optimizer, param_groups_weight_decay, warmup_cosine_lambda

__all__ = ["VideoClassifier", "aggregate_views"]


class VideoClassifier(L.LightningModule):
    """Video classification system.

    Args:
        model_name: registry name of the backbone (see ``videorec.models.list_models``); the module itself is
            ``self.backbone``. Checkpoints written when this argument was called ``backbone`` load as they are.
        num_classes: number of classes.
        backbone_kwargs: architecture overrides for ``create_model`` (``num_frames``, ``img_size``, ...).
        pretrained: checkpoint to initialise the backbone from (any supported format). Not re-read when a
            ``VideoClassifier`` checkpoint is loaded.
        inflate: 2D -> 3D kernel inflation mode for ``pretrained`` (None: the family's default).
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay; never applied to norms, biases and position embeddings.
        betas: AdamW betas (SGD uses ``betas[0]`` as momentum).
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        min_lr: final learning rate of the cosine schedule.
        label_smoothing: label smoothing of the cross-entropy loss (also applied to mixup targets).
        class_names: class names in label order, stored so predictions can be named.
        data_config: the data configuration the model was trained with (plain data, unused here), stored so that
            evaluation and prediction can rebuild the same input pipeline from the checkpoint alone.
        compile: ``torch.compile`` the backbone at fit time (in place: checkpoints keep the plain parameter names).
        grad_checkpointing: recompute each block's activations in the backward pass instead of keeping them
            (activation checkpointing: less memory, about a third more compute).
        channels_last: keep 5-D weights and inputs in the channels-last-3d layout (faster convolutions on GPUs with
            bf16 / fp16 for the convolutional families, UniFormer and XFormer).
        layer_decay: layer-wise learning-rate decay: the head keeps ``lr`` and each block below it gets
            ``layer_decay`` times the rate of the block above (None: one rate for all; fine-tuning recipes use 0.75).
    """

    def __init__(
        self,
        model_name: str = "uniformer_tiny",
        num_classes: int = 8,
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        inflate: str | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        class_names: list[str] | None = None,
        data_config: dict[str, Any] | None = None,
        compile: bool = False,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
        layer_decay: float | None = None,
        **renamed: Any,
    ) -> None:
        super().__init__()
        if "backbone" in renamed:  # the argument's former name, kept in older checkpoints' hyperparameters
            model_name = renamed.pop("backbone")
        if renamed:
            raise TypeError(f"VideoClassifier got unexpected arguments: {', '.join(sorted(renamed))}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes is {num_classes}")
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"module.layer_decay must be in (0, 1], got {layer_decay}")
        self.save_hyperparameters(ignore=["renamed"])
        self.backbone = create_model(
            model_name, num_classes=num_classes, pretrained=pretrained, inflate=inflate, **(backbone_kwargs or {})
        )
        applied = getattr(self.backbone, "applied_format_settings", None)
        if applied:  # settings the pretrained file's format implied: stored, so load_from_checkpoint rebuilds them
            self.hparams["backbone_kwargs"] = {**applied, **(backbone_kwargs or {})}
        self.backbone.set_grad_checkpointing(grad_checkpointing)
        if channels_last:
            channels_last_weights(self.backbone)
        self._flops_per_clip: float | None = None
        self._batch_clips = 0
        top5 = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_acc1_best = MaxMetric()
        # one clip of the training input size: Lightning's model summary reports per-layer sizes and FLOPs with it
        self.example_input_array = torch.zeros(1, 3, *self._input_size())
        self._test_views: list[dict[str, torch.Tensor]] = []
        self.test_views: dict[str, torch.Tensor] = {}
        self.video_results: dict[str, Any] = {}

    def _input_size(self) -> tuple[int, int, int]:
        """(T, H, W) of a training clip: from the data configuration when known, else the backbone's own."""
        data = self.hparams.data_config or {}
        frames = data.get("num_frames") or getattr(self.backbone, "num_frames", 8)
        size = data.get("crop_size") or getattr(self.backbone, "img_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(frames), int(h), int(w)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):  # type: ignore[override]
        """Load a checkpoint; the weights come from it, so the original ``pretrained`` file is not read again."""
        kwargs.setdefault("pretrained", None)
        kwargs.setdefault("weights_only", True)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, num_classes) logits."""
        if self.hparams.channels_last and video.ndim == 5:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        return self.backbone(video)

    @property
    def flops_per_batch(self) -> float:
        """Training FLOPs of the last training batch, for Lightning's ``ThroughputMonitor`` (and its MFU).

        Three times the forward FLOPs (the backward pass costs about two forwards: the convention of MFU figures),
        counted once per clip on the meta device (no memory, no compute) with the project's FLOP counter. Counting the
        backward itself is no better: PyTorch's counter ignores the groups of depthwise convolutions' backward.
        """
        if self._flops_per_clip is None:
            hp = self.hparams
            with torch.device("meta"):
                meta = create_model(hp.model_name, num_classes=hp.num_classes, **(hp.backbone_kwargs or {})).eval()
                clip = torch.zeros(1, 3, *self._input_size())
            with torch.no_grad(), flop_counter(display=False) as counter:
                meta(clip)
            self._flops_per_clip = 3.0 * counter.get_total_flops()
        return self._flops_per_clip * self._batch_clips

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if stage == "fit" and trainer is not None and trainer.world_size > 1:
            # DDP builds its gradient buckets from the parameters' strides: first let the weights take the strides
            # their gradients come back with, from one step on a dummy clip (batch 1 would be ambiguous too), on the
            # training device and in the training precision, where the kernels that produce the gradients run
            self.to(trainer.strategy.root_device)
            clip = torch.zeros(2, 3, *self._input_size(), device=self.device)

            def step() -> torch.Tensor:
                with trainer.precision_plugin.forward_context():
                    return self(clip).float().sum()

            match_grad_layouts(self.backbone, step)
        if self.hparams.compile and stage == "fit":
            # compiled in place: the parameters keep their names, so checkpoints load everywhere without torch.compile
            self.backbone.compile()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = strip_compiled(checkpoint["state_dict"])

    # --- training ---
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        video, label = batch["video"], batch["label"]
        if video.shape[0] == 0:
            # every video of this batch was undecodable (counted by the data layer): a zero loss that touches all
            # parameters keeps DDP ranks in step
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        self._batch_clips = video.shape[0]
        logits = self(video)
        target = batch.get("target", label)  # soft (B, K) targets when mixup/cutmix is on
        loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        bs = video.shape[0]
        self.train_loss(loss.detach(), bs)
        self.train_acc1(logits.detach(), label)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=bs)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        return loss

    # --- evaluation ---
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """Logs the epoch's val/loss, val/acc1 and val/acc5; returns the logits (for callbacks such as the W&B
        validation samples) or None for a batch whose videos were all undecodable."""
        video, label = batch["video"], batch["label"]
        if video.shape[0] == 0:
            return None
        logits = self(video)
        loss = F.cross_entropy(logits, label)
        bs = video.shape[0]
        self.val_loss(loss, bs)
        self.val_acc1(logits, label)
        self.val_acc5(logits, label)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, batch_size=bs)
        self.log("val/acc1", self.val_acc1, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("val/acc5", self.val_acc5, on_step=False, on_epoch=True, batch_size=bs)
        return logits.detach()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # every rank runs this hook at the same point, so the two computes below (each a collective) are issued in the
        # same order everywhere; the value is then the same on every rank and "max" reduces it exactly
        self.val_acc1_best(self.val_acc1.compute())
        self.log("val/acc1_best", self.val_acc1_best.compute(), sync_dist=True, reduce_fx="max", prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._test_views = []
        self.test_views = {}
        self.video_results = {}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Keeps every view's probabilities and loss; the metrics are computed once per epoch from the views of all
        ranks (``on_test_epoch_end``), so that each view counts exactly once whatever the world size."""
        video, label = batch["video"], batch["label"]
        if video.shape[0] == 0:
            return
        logits = self(video).float()
        n = logits.shape[0]
        zeros = torch.zeros(n, dtype=torch.long)
        self._test_views.append(
            {
                "probs": logits.softmax(-1).cpu(),
                "loss": F.cross_entropy(logits, label, reduction="none").cpu(),
                "label": label.cpu(),
                "video_index": batch.get("video_index", zeros).cpu(),
                "clip_index": batch.get("clip_index", zeros).cpu(),
                "crop_index": batch.get("crop_index", zeros).cpu(),
            }
        )

    def on_test_epoch_end(self) -> None:
        views = _gather_views(self._test_views)
        self._test_views = []
        if views is None:
            return
        self.test_views = views  # every rank's views, for other aggregations (eval's ensemble=max)
        self.video_results = aggregate_views(**views)
        # gathered and de-duplicated: the same on every rank (so "max" reduces exactly) and the same at any world size
        clip_level = {"clip_acc1": "acc1", "clip_acc5": "acc5", "clip_loss": "loss"}  # test/acc1: every view alone
        for key in ("clip_acc1", "clip_acc5", "clip_loss", "video_acc1", "video_acc5", "num_videos", "num_clips"):
            self.log(
                f"test/{clip_level.get(key, key)}", float(self.video_results[key]), sync_dist=True, reduce_fx="max"
            )

    # --- optimisation ---
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups_weight_decay(self, hp.weight_decay)
        if hp.get("layer_decay") is not None:
            groups = apply_layer_decay(self, groups, hp.lr, hp.layer_decay)
        optimizer = build_optimizer(groups, hp.optimizer, hp.lr, tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        # Counting the steps builds the train loader before a resumed run's loop state (with the loader's position in
        # its epoch) is restored, and Lightning would keep that loader, starting the resumed epoch from its first batch.
        # Dropping it makes the fit loop build the loader again after the restore, and load its saved position.
        self.trainer.fit_loop._combined_loader = None
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(round(hp.warmup_epochs * total / epochs))
        schedule = warmup_cosine_lambda(total, warmup, min_lr_ratio=hp.min_lr / hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}


def _gather_views(local: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """Concatenate this rank's per-view outputs and gather them from every rank."""
    keys = ("probs", "loss", "label", "video_index", "clip_index", "crop_index")
    cat = {k: torch.cat([v[k] for v in local]) if local else torch.empty(0) for k in keys}
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, cat)
        parts = [p for p in parts if p is not None and p["label"].numel()]
        if not parts:
            return None
        cat = {k: torch.cat([p[k] for p in parts]) for k in keys}
    if cat["label"].numel() == 0:
        return None
    return cat


def _top1_top_k(scores: torch.Tensor, label: torch.Tensor, k: int) -> tuple[float, float]:
    """Top-1 and top-k accuracy of (N, K) scores."""
    top = scores.topk(k, dim=1).indices
    return (top[:, 0] == label).double().mean().item(), (top == label.unsqueeze(1)).any(1).double().mean().item()


def aggregate_views(
    probs: torch.Tensor,
    label: torch.Tensor,
    video_index: torch.Tensor,
    clip_index: torch.Tensor,
    crop_index: torch.Tensor,
    ensemble: str = "mean",
    loss: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Clip-level and video-level metrics from every view (clip x crop) of every video.

    Each view is counted once, however often and in whatever order it comes (a padded sampler, the ranks' gather
    order): the views are de-duplicated by ``(video_index, clip_index, crop_index)`` and put in that order, so the
    figures are the same at any world size.

    Args:
        probs: (N, K) per-view class probabilities.
        label: (N,) labels.
        video_index, clip_index, crop_index: (N,) view identities.
        ensemble: ``"mean"`` averages the views' probabilities (the published protocol), ``"max"`` takes the
            largest probability of each class over the views.
        loss: (N,) per-view cross-entropy, for ``clip_loss`` (NaN without it).

    Returns:
        ``clip_acc1``, ``clip_acc5``, ``clip_loss`` (every view scored on its own), ``video_acc1``, ``video_acc5``
        (the views of each video combined), ``num_videos``, ``num_clips`` (views) and ``videos``: per video its
        index, label, combined probabilities and number of views.
    """
    if ensemble not in ("mean", "max"):
        raise ValueError(f"ensemble must be 'mean' or 'max', got {ensemble!r}")
    seen: dict[tuple[int, int, int], int] = {}
    for i, key in enumerate(zip(video_index.tolist(), clip_index.tolist(), crop_index.tolist(), strict=True)):
        seen.setdefault(key, i)
    keep = torch.tensor([seen[key] for key in sorted(seen)], dtype=torch.long)
    probs, label, video_index = probs[keep], label[keep], video_index[keep]
    K = probs.shape[1]
    k5 = min(5, K)
    clip_acc1, clip_acc5 = _top1_top_k(probs, label, k5)
    clip_loss = loss[keep].double().mean().item() if loss is not None and loss.numel() else float("nan")
    vids, inverse = torch.unique(video_index, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(vids))
    if ensemble == "mean":
        summed = torch.zeros(len(vids), K, dtype=torch.float64).index_add_(0, inverse, probs.double())
        combined = summed / counts.unsqueeze(1)
    else:
        index = inverse.unsqueeze(1).expand(-1, K)
        combined = torch.zeros(len(vids), K, dtype=torch.float64).scatter_reduce_(0, index, probs.double(), "amax")
    video_label = torch.zeros(len(vids), dtype=torch.long).index_copy_(0, inverse, label)
    acc1, acc5 = _top1_top_k(combined, video_label, k5)
    return {
        "clip_acc1": clip_acc1,
        "clip_acc5": clip_acc5,
        "clip_loss": clip_loss,
        "video_acc1": acc1,
        "video_acc5": acc5,
        "num_videos": len(vids),
        "num_clips": int(keep.numel()),
        "videos": {
            "video_index": vids,
            "label": video_label,
            "probs": combined.float(),
            "num_views": counts,
        },
    }
