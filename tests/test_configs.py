"""Every config group composes, and each option instantiates."""

import pytest
import torch
from conftest import CONF_DIR as CONF
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from videorec.models import create_model, is_model


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_train_config(compose, tmp_path):
    cfg = compose("train", [], tmp_path)
    assert cfg.model.name == "uniformer_tiny"
    assert cfg.data._target_.endswith("SyntheticDataModule")
    assert "wandb" in cfg.logger
    assert cfg.paths.output_dir == str(tmp_path)
    OmegaConf.resolve(cfg)


@pytest.mark.parametrize("option", _options("model"))
def test_model_group(compose, tmp_path, option):
    cfg = compose("train", [f"model={option}"], tmp_path)
    assert cfg.model.name == option and is_model(option)
    assert set(cfg.model) >= {"name", "kwargs", "pretrained"}


@pytest.mark.parametrize("option", _options("data"))
def test_data_group(compose, tmp_path, option):
    cfg = compose("train", [f"data={option}", f"data.root={tmp_path}"], tmp_path)
    if cfg.data.get("variant") == "k600":  # no canonical list shipped: the user gives one
        with pytest.raises(InstantiationException, match="data.class_names_file"):
            instantiate(cfg.data)
        names = tmp_path / "classes.txt"
        names.write_text("a\nb\nc\n")
        cfg.data.class_names_file = str(names)
    if option == "ssv2":  # the class list comes from the official labels file
        (tmp_path / "something-something-v2-labels.json").write_text(
            '{"Holding something": "0", "Moving something up": "1"}'
        )
    for key in ("batch_size", "num_workers", "num_frames", "crop_size", "temporal_control"):
        assert key in cfg.data, f"data={option} lacks {key}"
    dm = instantiate(cfg.data)
    assert dm.num_classes == len(dm.class_names) > 1


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_group(compose, tmp_path, option):
    cfg = compose("train", [f"trainer={option}"], tmp_path)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if option in ("default", "cpu"):
        trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", _options("logger"))
def test_logger_group(compose, tmp_path, option, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from videorec.utils.run import instantiate_loggers

    cfg = compose("train", [f"logger={option}"], tmp_path)
    loggers = instantiate_loggers(cfg.logger)
    assert len(loggers) == (0 if option == "none" else 1)


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callbacks_group(compose, tmp_path, option):
    from videorec.utils.run import instantiate_callbacks

    cfg = compose("train", [f"callbacks={option}"], tmp_path)
    callbacks = instantiate_callbacks(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    if option == "default":
        assert {"ModelCheckpoint", "LearningRateMonitor", "RichProgressBar", "SkippedVideosCallback"} <= names


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiment_group(compose, tmp_path, option):
    cfg = compose("train", [f"experiment={option}"], tmp_path)
    assert is_model(cfg.model.name)
    OmegaConf.resolve(cfg)


@pytest.mark.parametrize("option", _options("debug"))
def test_debug_group(compose, tmp_path, option):
    cfg = compose("train", [f"debug={option}"], tmp_path)
    assert cfg.trainer


def test_eval_config(compose, tmp_path):
    cfg = compose("eval", ["ckpt_path=x.ckpt"], tmp_path)
    assert cfg.ckpt_path == "x.ckpt" and cfg.get("data") is None
    cfg = compose("eval", ["ckpt_path=x.ckpt", "data=k400", "data.eval_clips=4", "data.eval_crops=3"], tmp_path)
    assert cfg.data.eval_clips == 4 and cfg.data.eval_crops == 3


def test_unknown_model_group_option_lists_known_models(compose, tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as e:
        compose("train", ["model=not_a_model"], tmp_path)
    assert "uniformer_tiny" in str(e.value)


@pytest.mark.parametrize("option", _options("recipe"))
def test_recipe_group_names_a_data_and_model_pair(compose, tmp_path, option):
    data = next((d for d in _options("data") if option.startswith(f"{d}_")), None)
    assert data is not None, f"recipe/{option}.yaml: no data option is a prefix of its name"
    model = option[len(data) + 1 :]
    assert model in _options("model"), f"recipe/{option}.yaml: {model} is not a model option"
    recipe = OmegaConf.load(CONF / "recipe" / f"{option}.yaml")
    cfg = compose("train", [f"data={data}", f"model={model}", f"data.root={tmp_path}"], tmp_path)
    # the recipe is applied when the pair is chosen
    if "base_lr" in recipe:
        assert cfg.base_lr == recipe.base_lr and cfg.global_batch_size == recipe.global_batch_size
    if OmegaConf.select(recipe, "module.lr") is not None:
        assert cfg.module.lr == recipe.module.lr
    if OmegaConf.select(recipe, "trainer.max_epochs") is not None:
        assert cfg.trainer.max_epochs == recipe.trainer.max_epochs
    kwargs = recipe.get("model", {}).get("kwargs", {})
    model = create_model(cfg.model.name, **cfg.model.kwargs)  # architecture choices reach the model
    for key, value in kwargs.items():
        assert cfg.model.kwargs[key] == value
        if hasattr(model, key):  # e.g. global_pool (drop_path_rate is spread over the blocks instead)
            assert getattr(model, key) == value


def test_recipe_follows_the_model_choice_and_yields_to_overrides(compose, tmp_path):
    base = compose("train", ["model=twins_svt_s"], tmp_path)  # no recipe for this pair: train.yaml's values
    demo = compose("train", ["experiment=demo"], tmp_path)
    assert demo.module.lr == OmegaConf.load(CONF / "recipe" / "synthetic_uniformer_tiny.yaml").module.lr
    assert demo.module.lr != base.module.lr
    mvit = compose("train", ["experiment=demo", "model=mvit_tiny"], tmp_path)  # the demo with another model
    assert mvit.module.lr == OmegaConf.load(CONF / "recipe" / "synthetic_mvit_tiny.yaml").module.lr
    pinned = compose("train", ["model=mvit_tiny", "module.lr=0.123", "trainer.max_epochs=2"], tmp_path)
    assert pinned.module.lr == 0.123 and pinned.trainer.max_epochs == 2


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a plain config mapping."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_each_default_is_stated_once(compose, tmp_path):
    k400 = OmegaConf.to_container(compose("train", ["data=k400"], tmp_path).data)
    for variant in ("k600", "k700"):
        lines = [ln for ln in (CONF / "data" / f"{variant}.yaml").read_text().splitlines() if ln.split("#")[0].strip()]
        assert len(lines) <= 6, f"data/{variant}.yaml repeats k400.yaml: {lines}"
        composed = OmegaConf.to_container(compose("train", [f"data={variant}"], tmp_path).data)
        assert {k for k in k400 if composed.get(k) != k400[k]} <= {"name", "variant"}, variant
    # the loader defaults live in data/base/loader.yaml only
    base = OmegaConf.load(CONF / "data" / "base" / "loader.yaml")
    for option in _options("data"):
        text = (CONF / "data" / f"{option}.yaml").read_text()
        composed = compose("train", [f"data={option}"], tmp_path).data
        restated = [k for k in base if f"\n{k}:" in text and composed[k] == base[k]]
        assert not restated, f"data/{option}.yaml restates the loader defaults {restated}"
    # a recipe holds only what differs from train.yaml and the data and model configs
    for option in _options("recipe"):
        data = next(d for d in _options("data") if option.startswith(f"{d}_"))
        recipe = OmegaConf.to_container(OmegaConf.load(CONF / "recipe" / f"{option}.yaml"))
        model = option[len(data) + 1 :]
        plain = compose("train", [f"data={data}", f"model={model}", "~recipe"], tmp_path)  # the pair without it
        same = [key for key, value in _leaves(recipe) if OmegaConf.select(plain, key) == value]
        assert not same, f"recipe/{option}.yaml repeats the defaults {same}"
    # drop_path_rate lives in the model config or in the model code, never both
    for option in _options("model"):
        if "drop_path_rate" not in OmegaConf.load(CONF / "model" / f"{option}.yaml").get("kwargs", {}):
            continue
        with torch.device("meta"):
            model = create_model(option)
        rates = [m.drop_prob for m in model.modules() if hasattr(m, "drop_prob")]
        assert rates and max(rates) == 0.0, f"model/{option}.yaml and the {option} variant both set drop_path_rate"


PUBLISHED = [option for option in _options("recipe") if not option.startswith("synthetic_")]


def test_every_published_pair_has_its_recipe():
    wanted = {f"k400_{m}" for m in ("mvit_b", "mvit_b_32x3", "mvitv2_s", "mvitv2_b", "uniformer_s", "uniformer_b")}
    wanted |= {f"ssv2_{m}" for m in ("uniformer_s", "uniformer_b", "mvitv2_s", "mvitv2_b")}
    assert wanted <= set(PUBLISHED)
    for option in PUBLISHED:  # every number cites where it comes from
        text = (CONF / "recipe" / f"{option}.yaml").read_text()
        assert "REFERENCES.md" in text and ("PySlowFast" in text or "Sense-X/UniFormer" in text), option


def test_the_mission_command_trains_the_published_mvit_recipe(compose, tmp_path):
    from videorec.train import scale_batch_and_lr

    cfg = compose("train", ["model=mvit_b", "data=k400", f"data.root={tmp_path}"], tmp_path)
    assert cfg.trainer.max_epochs == 200 and cfg.module.warmup_epochs == 30
    assert cfg.global_batch_size == 512 and cfg.trainer.gradient_clip_val == 1.0 and cfg.data.eval_clips == 5
    on_64_gpus = scale_batch_and_lr(cfg, world_size=64)
    assert on_64_gpus["lr"] == pytest.approx(1.6e-3) and on_64_gpus["per_device_batch_size"] == 8
    on_8_gpus = scale_batch_and_lr(cfg, world_size=8)  # the same global batch through gradient accumulation
    assert on_8_gpus["accumulate_grad_batches"] == 8 and on_8_gpus["lr"] == pytest.approx(1.6e-3)


@pytest.mark.parametrize("option", PUBLISHED)
def test_published_recipe_runs_one_batch_with_the_family_tiny_model(tmp_path, option, tiny_synthetic_root):
    """Each recipe applied to the embedded set and the tiny model of its family: one batch of train and val."""
    from conftest import compose_config, synthetic_overrides

    from videorec.train import train

    data, model = option.split("_", 1)
    tiny = f"{model.split('_')[0].replace('mvitv2', 'mvit')}_tiny"
    overrides = [
        f"recipe={option}",
        f"model={tiny}",
        *synthetic_overrides(tiny_synthetic_root),
        "trainer.fast_dev_run=true",
        "logger=none",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    recipe = OmegaConf.load(CONF / "recipe" / f"{option}.yaml")
    assert cfg.trainer.max_epochs == recipe.trainer.max_epochs and cfg.base_lr == recipe.base_lr  # the recipe applies
    metrics = train(cfg)
    assert "val/acc1" in metrics


def test_every_trainer_argument_is_a_plain_override(compose, tmp_path):
    import inspect

    import lightning as L

    cfg = compose("train", [], tmp_path)
    given_elsewhere = {"self", "logger", "callbacks", "plugins"}  # the logger / callbacks groups, train()
    missing = set(inspect.signature(L.Trainer.__init__).parameters) - given_elsewhere - set(cfg.trainer)
    assert not missing, f"trainer/default.yaml lacks {sorted(missing)}"
    knobs = ["trainer.max_steps=100", "trainer.val_check_interval=0.5", "trainer.max_time=00:01:00:00"]
    cfg = compose("train", [*knobs, "trainer.enable_progress_bar=false"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_steps == 100 and trainer.val_check_interval == 0.5
    (timer,) = [c for c in trainer.callbacks if type(c).__name__ == "Timer"]  # Lightning's max_time callback
    assert timer.time_remaining() == pytest.approx(3600, abs=5)
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:  # an unknown key stays an error that names it
        compose("train", ["trainer.max_stpes=100"], tmp_path)
    assert "max_stpes" in str(info.value.__cause__ or info.value)


def test_switched_off_trainer_features_drop_their_callbacks(compose, tmp_path):
    from videorec.train import _enabled
    from videorec.utils.run import instantiate_callbacks

    overrides = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    cfg = compose("train", [*overrides, "trainer.enable_checkpointing=false"], tmp_path)
    kept = {type(c).__name__ for c in _enabled(instantiate_callbacks(cfg.callbacks), cfg.trainer, has_logger=True)}
    assert not kept & {"RichProgressBar", "RichModelSummary", "ModelCheckpoint", "LastCheckpoint"}
    assert {"SkippedVideosCallback", "LearningRateMonitor", "ExactResume"} <= kept
    instantiate(
        cfg.trainer, logger=False, callbacks=list(_enabled(instantiate_callbacks(cfg.callbacks), cfg.trainer, True))
    )


def test_every_dataloader_knob_is_a_plain_override(compose, tmp_path):
    import inspect

    from torch.utils.data import DataLoader

    owned = {"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "worker_init_fn",
             "generator", "pin_memory_device"}  # the datamodule's own job (pin_memory_device: deprecated)  # fmt: skip
    knobs = set(inspect.signature(DataLoader.__init__).parameters) - owned
    for option in _options("data"):
        data = compose("train", [f"data={option}"], tmp_path).data
        assert knobs <= set(data), f"data={option} lacks {sorted(knobs - set(data))}"
    overrides = ["data.prefetch_factor=4", "data.timeout=30", "data.in_order=false", "data.drop_last=true"]
    cfg = compose("train", [*overrides, "data.num_workers=1", f"data.root={tmp_path}"], tmp_path)
    from videorec.data import VideoRecord

    dm = instantiate(cfg.data)
    dm.set_records("train", [VideoRecord("a.mp4", 0)])
    loader = dm.train_dataloader()
    assert (loader.prefetch_factor, loader.timeout, loader.in_order, loader.drop_last) == (4, 30, False, True)
    dm.set_records("val", [VideoRecord("a.mp4", 0)])
    assert dm.val_dataloader().drop_last is False  # evaluation never drops a video
