"""VideoClassifier: optimiser groups, schedule, multi-view aggregation, checkpoint reload without Hydra."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from videorec.lit import VideoClassifier, aggregate_views
from videorec.lit.optim import param_groups_weight_decay, warmup_cosine_lambda


class RandomClips(Dataset):
    def __init__(self, n=8, num_classes=4):
        g = torch.Generator().manual_seed(0)
        self.video = torch.randn(n, 3, 8, 64, 64, generator=g)
        self.label = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self):
        return len(self.label)

    def __getitem__(self, i):
        return {"video": self.video[i], "label": self.label[i], "video_index": i, "clip_index": 0, "crop_index": 0}


def _module(**kw):
    return VideoClassifier(model_name="uniformer_tiny", num_classes=4, **kw)


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    lit = _module(weight_decay=0.1)
    decay, no_decay = param_groups_weight_decay(lit, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in lit.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "backbone.blocks3.0.norm1.weight" in nd and "backbone.head.bias" in nd
    assert "backbone.blocks1.0.norm1.weight" in nd  # BatchNorm scale
    assert "backbone.blocks1.0.pos_embed.weight" in nd  # dynamic position embedding
    assert "backbone.blocks3.0.attn.qkv.weight" in d and "backbone.head.weight" in d
    assert len(nd) + len(d) == len(list(lit.parameters()))


def test_warmup_cosine_schedule():
    f = warmup_cosine_lambda(total_steps=100, warmup_steps=10, min_lr_ratio=0.01)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values[:10], values[1:10], strict=False))
    assert all(b <= a + 1e-12 for a, b in zip(values[10:], values[11:], strict=False))
    assert f(100) == pytest.approx(0.01) and values[55] == pytest.approx(0.505, abs=0.01)


def test_aggregate_views_averages_probabilities_per_video_and_ignores_duplicates():
    # video 0: two clips, one wrong but less confident -> video correct; video 1: one clip, wrong
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.3, 0.7, 0.0], [0.0, 0.2, 0.8], [0.3, 0.7, 0.0]])
    label = torch.tensor([0, 0, 1, 0])
    video = torch.tensor([0, 0, 1, 0])
    clip = torch.tensor([0, 1, 0, 1])  # the last row duplicates view (0, 1, 0)
    crop = torch.zeros(4, dtype=torch.long)
    out = aggregate_views(probs, label, video, clip, crop)
    assert out["num_videos"] == 2 and out["num_clips"] == 3
    assert out["video_acc1"] == pytest.approx(0.5)
    assert out["video_acc5"] == pytest.approx(1.0)
    torch.testing.assert_close(out["videos"]["probs"][0], torch.tensor([0.6, 0.4, 0.0]))
    assert out["videos"]["num_views"].tolist() == [2, 1]


def test_train_checkpoint_reloads_without_hydra(tmp_path):
    lit = _module(lr=1e-3, warmup_epochs=0.5, class_names=["a", "b", "c", "d"], data_config={"_target_": "x.Y"})
    loader = DataLoader(RandomClips(), batch_size=4)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(lit, loader, loader)
    assert trainer.global_step == 4
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = VideoClassifier.load_from_checkpoint(ckpt).eval()
    lit.eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), lit(x))
    assert loaded.hparams.class_names == ["a", "b", "c", "d"]
    assert loaded.hparams.data_config == {"_target_": "x.Y"}
    # the checkpoint holds plain data only: it loads with weights_only=True
    raw = torch.load(ckpt, weights_only=True)
    assert raw["hyper_parameters"]["model_name"] == "uniformer_tiny"
    # a checkpoint from when the argument was called `backbone` loads the same model
    raw["hyper_parameters"]["backbone"] = raw["hyper_parameters"].pop("model_name")
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    renamed = VideoClassifier.load_from_checkpoint(old).eval()
    assert renamed.hparams.model_name == "uniformer_tiny" and "backbone" not in renamed.hparams
    with torch.no_grad():
        torch.testing.assert_close(renamed(x), lit(x))
    with pytest.raises(TypeError, match="unexpected arguments: colour"):
        VideoClassifier(colour="red")


def test_learning_rate_follows_warmup_then_decays(tmp_path):
    lit = _module(lr=1e-2, warmup_epochs=1, min_lr=1e-4)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    loader = DataLoader(RandomClips(n=8), batch_size=2)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[Record()],
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(lit, loader)
    assert len(lrs) == 12
    assert lrs[0] < lrs[3] == pytest.approx(1e-2)  # 4 warmup steps
    assert lrs[-1] < lrs[4] and lrs[-1] > 1e-4


def test_soft_targets_from_mixup_are_used_for_the_loss():
    lit = _module(label_smoothing=0.0)
    batch = RandomClips(n=2)[0]
    video = torch.stack([batch["video"]] * 2)
    label = torch.tensor([0, 1])
    with torch.no_grad():
        logits = lit(video)
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    lit.log = lambda *a, **k: None
    loss = lit.training_step({"video": video, "label": label, "target": soft}, 0)
    expected = torch.nn.functional.cross_entropy(logits, soft)
    torch.testing.assert_close(loss, expected)


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="class_names"):
        _module(class_names=["a"])


def test_model_summary_reports_sizes_and_flops_of_the_training_clip():
    from lightning.pytorch.utilities.model_summary import ModelSummary

    module = _module(data_config={"num_frames": 4, "crop_size": 32})
    assert tuple(module.example_input_array.shape) == (1, 3, 4, 32, 32)
    summary = ModelSummary(module, max_depth=1)
    assert summary.total_flops > 0
    assert summary.out_sizes[summary.layer_names.index("backbone")] == [1, 4]
    # without a data configuration, the backbone's own input size
    assert tuple(_module().example_input_array.shape) == (1, 3, 8, 64, 64)
