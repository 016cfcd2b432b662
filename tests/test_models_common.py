"""Checks every registered model family passes: shapes, finite outputs, gradients to every parameter, overrides."""

import pytest
import torch

from videorec.models import UnknownModelError, create_model, list_models, load_pretrained, model_family
from videorec.models.layers import DropPath
from videorec.models.mvit import MViT, model_cfgs
from videorec.models.registry import build_variant
from videorec.models.twins import Twins
from videorec.models.uniformer import UniFormer
from videorec.models.vvt import VicinityVisionTransformer

TINY = list_models("*_tiny")


def _input_for(model, batch=2):
    cfg = model.variant_args
    t = cfg.get("num_frames", 4)
    s = cfg.get("img_size", 64)
    return torch.randn(batch, 3, t, s, s)


def test_every_family_has_a_tiny_variant():
    with_tiny = {model_family(name) for name in TINY}
    assert "uniformer" in with_tiny
    for name in list_models():
        assert model_family(name) in with_tiny, f"{name}: its family {model_family(name)} has no *_tiny variant"


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_shape_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    x = _input_for(model)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_uniform_api(name):
    model = create_model(name, num_classes=3).eval()
    x = _input_for(model, batch=1)
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (1, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7)
    assert isinstance(model.no_weight_decay(), set)


@pytest.mark.parametrize("name", TINY)
def test_tiny_drop_path_override_changes_training_output(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, drop_path_rate=0.5).train()
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.5)


POOLED = [name for name in TINY if model_family(name) != "mvit"]  # MViT pools its class token or the mean


@pytest.mark.parametrize("name", POOLED)
def test_tiny_global_pool_options(name):
    """``global_pool`` pools the same features by mean, max or their average; the default is the published mean."""
    torch.manual_seed(0)
    models = {pool: create_model(name, num_classes=3, global_pool=pool).eval() for pool in ("avg", "max", "avgmax")}
    assert create_model(name, num_classes=3).global_pool == "avg"
    for pool in ("max", "avgmax"):  # same weights, only the pooling differs
        models[pool].load_state_dict(models["avg"].state_dict())
    x = _input_for(models["avg"], batch=2)
    with torch.no_grad():
        feats = models["avg"].forward_features(x).flatten(2)  # (B, C, positions)
        pooled = {pool: m.forward_head(m.forward_features(x), pre_logits=True) for pool, m in models.items()}
    assert feats.shape[-1] > 1
    torch.testing.assert_close(pooled["avg"], feats.mean(-1))
    torch.testing.assert_close(pooled["max"], feats.amax(-1))
    torch.testing.assert_close(pooled["avgmax"], (feats.mean(-1) + feats.amax(-1)) / 2)
    assert not torch.allclose(pooled["avg"], pooled["max"])
    with pytest.raises(ValueError, match="global_pool must be one of"):
        create_model(name, global_pool="median")


def test_image_batch_is_a_one_frame_video():
    model = create_model("uniformer_tiny", num_classes=4).eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(img), model(img.unsqueeze(2)))


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as e:
        create_model("uniformer_xxl")
    msg = str(e.value)
    assert "uniformer_xxl" in msg and "uniformer_s" in msg and "uniformer_tiny" in msg


def test_unknown_override_names_the_key():
    with pytest.raises(TypeError, match="no_such_arg"):
        create_model("uniformer_tiny", no_such_arg=3)


def test_list_models_pattern():
    assert set(list_models("uniformer_*")) >= {"uniformer_s", "uniformer_b", "uniformer_tiny"}
    assert list_models("does_not_exist*") == []


# --------------------------------------------------------------------------------------------------------------------
# The checkpoint-filter contract: a class attribute, inherited, returning (state_dict, format_name)
# --------------------------------------------------------------------------------------------------------------------


class OutsideTwins(Twins):
    """A family's subclass defined outside its family's module."""


class OutsideMViT(MViT):
    """An MViT subclass defined outside ``videorec.models.mvit``."""


class OutsideVVT(VicinityVisionTransformer):
    """A VVT subclass defined outside ``videorec.models.vvt``."""


class DictFilterUniFormer(UniFormer):
    """A filter that breaks the contract by returning a bare state dict."""

    checkpoint_filter = staticmethod(lambda state_dict, model: state_dict)


def _like(cls, name: str, **overrides):
    """An instance of ``cls`` with the architecture of the registered variant ``name`` (not an MViT)."""
    defaults = {k: v for k, v in create_model(name).variant_args.items() if k != "architecture"}
    return build_variant(cls, name, defaults, overrides)


def _timm_twins_keys(sd):
    return {k.replace(".proj.", ".proj.0.") if k.startswith("pos_block.") else k: v for k, v in sd.items()}


def _slowfast_mvit_keys(sd):
    return {k.replace("head.", "head.projection."): v for k, v in sd.items()}


@pytest.mark.parametrize(
    ("make", "source", "rename", "fmt"),
    [
        (lambda: _like(OutsideTwins, "twins_pcpvt_tiny"), lambda: create_model("twins_pcpvt_tiny"), _timm_twins_keys,
         "timm-twins"),
        (lambda: OutsideMViT(model_cfgs["mvit_tiny"].cfg, num_classes=8, num_frames=8, img_size=64),
         lambda: create_model("mvit_tiny"), _slowfast_mvit_keys, "slowfast-mvit"),
        (lambda: _like(OutsideVVT, "vvt_tiny", num_frames=1), lambda: create_model("vvt_tiny", num_frames=1), dict,
         "vvt-image"),
    ],
    ids=["twins", "mvit", "vvt"],
)  # fmt: skip
def test_subclass_defined_elsewhere_keeps_its_familys_converter(tmp_path, make, source, rename, fmt):
    torch.manual_seed(0)
    src = source()
    torch.save(rename(src.state_dict()), tmp_path / "src.pth")
    model = make()
    assert type(model).__module__ == __name__
    report = load_pretrained(model, tmp_path / "src.pth")
    assert report.format == fmt
    assert report.renamed == len(set(src.state_dict()) - set(rename(src.state_dict())))  # keys the filter renamed
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_checkpoint_filter_must_return_state_dict_and_format(tmp_path):
    torch.save(create_model("uniformer_tiny").state_dict(), tmp_path / "src.pth")
    model = _like(DictFilterUniFormer, "uniformer_tiny")
    with pytest.raises(
        TypeError, match=r"DictFilterUniFormer.checkpoint_filter must return \(state_dict, format_name\)"
    ):
        load_pretrained(model, tmp_path / "src.pth")


@pytest.mark.parametrize("name", TINY)
def test_own_checkpoint_is_the_familys_format(tmp_path, name):
    torch.save(create_model(name).state_dict(), tmp_path / "own.pth")
    report = load_pretrained(create_model(name), tmp_path / "own.pth")
    assert report.format == model_family(name) and report.renamed == 0 and not report.inflated


# --------------------------------------------------------------------------------------------------------------------
# The README's sizes are what the code builds
# --------------------------------------------------------------------------------------------------------------------


def _readme_tables() -> list[list[dict[str, str]]]:
    """The markdown tables of the README's model-zoo section (before its subsections), rows as {column: cell}."""
    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Model zoo") :]
    section = section[: section.index("\n### ")]
    tables, rows, header = [], [], None
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells, strict=True)))
        elif header is not None:
            tables.append(rows)
            rows, header = [], None
    return tables


def _decimals(cell: str) -> int:
    return len(cell.split(".")[1]) if "." in cell else 0


def _check_params(cell: str, n: int) -> None:
    if cell.endswith("M"):
        quoted = cell[:-1]
        assert round(n / 1e6, _decimals(quoted)) == float(quoted), (cell, n)
    else:  # an exact count
        assert int(cell.replace(",", "")) == n, (cell, n)


def _check_gflops(cell: str, g: float) -> None:
    assert round(g, _decimals(cell)) == float(cell), (cell, g)


def test_readme_size_tables_are_what_the_code_builds():
    from conftest import load_script

    measure = load_script("model_table").measure
    uniform, published = _readme_tables()
    assert {row["model"].strip("`") for row in uniform} == {n for n in list_models() if not n.endswith("_tiny")}
    for row in uniform:  # every model at 16x224x224, 400 classes: scripts/model_table.py's own output
        assert row["input (T x H x W)"] == "16x224x224", row
        n, g = measure(row["model"].strip("`"), 16, 224, 400)
        _check_params(row["params (M)"] + "M", n)
        _check_gflops(row["GFLOPs / view"], g)
    assert len(published) >= 10
    for row in published:
        t, h, w = map(int, row["input (T x H x W)"].split("x"))
        assert h == w, row
        n, g = measure(row["model"].strip("`"), t, h, int(row["classes"]))
        _check_params(row["params"], n)
        _check_gflops(row["GFLOPs / view"], g)
        if row["paper"]:  # "21.4M / 41.8" or "12.9M": within 1% of what we build
            parts = [p.strip() for p in row["paper"].split("/")]
            assert abs(float(parts[0].rstrip("M")) * 1e6 / n - 1) < 0.01, (row, n)
            if len(parts) > 1:
                assert abs(float(parts[1]) / g - 1) < 0.01, (row, g)
