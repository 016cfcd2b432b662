"""Print the params / GFLOPs table of every registered model (markdown), counted on the meta device (no compute).

GFLOPs are FlopCounterMode total / 2 (one multiply-add = one FLOP, as in the papers and fvcore), for one view.

    python scripts/model_table.py                       # every model at 16x224x224, 400 classes
    python scripts/model_table.py --models 'mvit*' --frames 32 --size 224
"""

from __future__ import annotations

import argparse
import fnmatch

import torch

from videorec.models import create_model, list_models
from videorec.utils.profile import count_gflops, count_params


def measure(name: str, frames: int, size: int, num_classes: int) -> tuple[int, float]:
    """(parameters, GFLOPs of one view) of ``name`` built for ``frames`` x ``size`` x ``size`` input, on the meta
    device."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, num_frames=frames, img_size=size)
        x = torch.empty(1, 3, frames, size, size)
    return count_params(model), count_gflops(model, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["*"], help="registry names or glob patterns")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--include-tiny", action="store_true", help="also list the *_tiny test variants")
    args = parser.parse_args()

    names = [n for n in list_models() if any(fnmatch.fnmatch(n, p) for p in args.models)]
    if not args.include_tiny:
        names = [n for n in names if not n.endswith("_tiny")]
    if not names:
        raise SystemExit(f"no registered model matches {args.models}; known: {', '.join(list_models())}")
    print("| model | input (T x H x W) | params (M) | GFLOPs / view |")
    print("|---|---|---|---|")
    for name in names:
        try:
            n_params, n_gflops = measure(name, args.frames, args.size, args.num_classes)
            gflops, params = f"{n_gflops:.1f}", f"{n_params / 1e6:.1f}"
        except Exception as e:  # noqa: BLE001 - a model that cannot take this input says why, the table goes on
            params, gflops = "-", f"n/a ({type(e).__name__}: {str(e)[:60]})"
        print(f"| `{name}` | {args.frames}x{args.size}x{args.size} | {params} | {gflops} |")


if __name__ == "__main__":
    main()
