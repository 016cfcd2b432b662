"""The VVT and XFA attentions are linear in the number of tokens: memory grows ~4x from N to 4N, never N x N.

Peak memory is measured on CPU with ``videorec.utils.profile.PeakMemoryMeter`` (a dispatch mode), which sums the
storages alive at once among the tensors the aten ops create (deterministic: independent of the allocator). The
shared softmax attention's reference path is measured with the same meter as a control: it must look quadratic, which
shows the meter can tell the two apart.
"""

import math

import pytest
import torch
from conftest import load_script

from videorec.models.layers import Attention, attention
from videorec.models.vvt import VicinityAttention
from videorec.models.xformer import CrossFeatureAttention
from videorec.utils.profile import PeakMemoryMeter, measure_peak

DIM = 32
N_SMALL = 1024  # grid (4, 16, 16)
N_LARGE = 4 * N_SMALL  # grid (4, 32, 32)


def _grid(n):
    side = int((n // 4) ** 0.5)
    return (4, side, side)


def _vvt(decomposition):
    module = VicinityAttention(DIM, num_heads=2, decomposition=decomposition).eval()
    return module, lambda x: module(x, _grid(x.shape[1]))


def _xfa():
    module = CrossFeatureAttention(DIM, qkv_dim=DIM, num_heads=2).eval()
    return module, module


def _softmax_reference():
    module = Attention(DIM, num_heads=2).eval()

    def call(x):
        B, N, _ = x.shape
        qkv = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        y = attention(*qkv.unbind(0), fused=False)  # the shared core's explicit softmax path
        return module.proj(y.transpose(1, 2).reshape(B, N, -1))

    return module, call


def _peak(module, call, n):
    torch.manual_seed(0)
    x = torch.randn(1, n, DIM)
    return measure_peak(lambda: call(x), x, *module.parameters())


CASES = {
    "vvt-sum": lambda: _vvt("sum"),
    "vvt-product": lambda: _vvt("product"),
    "xfa": _xfa,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peak_memory_grows_linearly(case):
    module, call = CASES[case]()
    small = _peak(module, call, N_SMALL)
    large = _peak(module, call, N_LARGE)
    assert small.peak > 0
    ratio = large.peak / small.peak
    # linear: ~4x; quadratic would be ~16x
    assert ratio < 5.0, f"{case}: peak memory grew {ratio:.1f}x from N={N_SMALL} to N={N_LARGE}"
    assert ratio > 2.0, f"{case}: peak memory barely grew ({ratio:.2f}x): is the meter seeing the tensors?"


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_intermediate_is_n_by_n(case):
    module, call = CASES[case]()
    meter = _peak(module, call, N_LARGE)
    assert meter.shapes, "the meter saw no operations"
    assert meter.max_numel < N_LARGE * N_LARGE
    for shape in meter.shapes:
        assert sum(d >= N_LARGE for d in shape) <= 1, f"{case}: intermediate of shape {shape} is N x N"


def test_meter_sees_the_quadratic_softmax_reference():
    module, call = _softmax_reference()
    small = _peak(module, call, N_SMALL)
    large = _peak(module, call, N_LARGE)
    assert large.peak / small.peak > 10.0
    assert large.max_numel >= N_LARGE * N_LARGE


def test_meter_counts_storage_once_and_frees():
    meter = PeakMemoryMeter()
    with meter:
        a = torch.ones(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new storage
        del a
        c = torch.ones(500)  # 2000 bytes, while a's storage lives on through b
        del b
        d = torch.ones(250)  # 1000 bytes after a/b were freed
    assert meter.peak == 6000
    assert meter.current == 3000
    del c, d


def test_bench_models_scaling_mode_reports_growth_per_token_count(tmp_path, capsys):
    import json

    bench = load_script("bench_models")
    out = tmp_path / "scaling.json"
    rows = bench.main(
        ["--models", "vvt_tiny,xformer_tiny", "--scaling", "64,32", "--frames", "4", "--batch", "1", "--iters", "1",
         "--warmup", "0", "--json", str(out)]
    )  # fmt: skip
    assert [(r["model"], r["size"]) for r in rows] == [("vvt_tiny", 32), ("vvt_tiny", 64)] + [
        ("xformer_tiny", 32),
        ("xformer_tiny", 64),
    ]
    big = rows[1]
    assert big["token_growth"] == 4.0 and big["fwd_ms"] > 0 and big["fwd_bwd_growth"] > 0
    # the exponent is log(time growth) / log(token growth)
    assert abs(big["fwd_exponent"] - math.log(big["fwd_growth"]) / math.log(4.0)) < 1e-9
    assert json.loads(out.read_text())["results"][3]["size"] == 64
    assert "exponent 1: linear in tokens" in capsys.readouterr().out
