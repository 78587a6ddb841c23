"""What drives the host memory of elm-plan's compile: the preset's step with fewer layers.

    python bench/compile_memory.py                                  # 450M shapes on v5p-8
    python bench/compile_memory.py --size 3b --topology v5p-32 --layers 1,2,4
    python bench/compile_memory.py --size 3b --topology v5p-128 --layers 1,2 --flags mesh.data=4,mesh.fsdp=16

Compiles the preset's train step (libtpu, ahead of time, on this CPU) with the model cut to each
``--layers`` count, everything else as shipped, each in a child process (``plan_table``'s), and
prints per compile: peak host RAM, the TPU program's code size, XLA's temporaries and the compile
time; then the least-squares cost of one more layer and the intercept. OpenELM's layers all have
their own shapes, so the step cannot loop over them: each is compiled on its own, and the compile's
memory grows with the layer count (see docs/PLANNING.md for the figures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_table import parse_overrides, plan_in_child  # noqa: E402  (bench/ is not a package)

from elm_jax.config import from_config_dict  # noqa: E402
from elm_jax.presets import SIZES, openelm_config  # noqa: E402
from elm_jax.train import plan as plan_lib  # noqa: E402
from elm_jax.train import topology as topo_lib  # noqa: E402
from elm_jax.train.topology import GIB  # noqa: E402

MIB = 2 ** 20


def _slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
             / sum((x - mean_x) ** 2 for x in xs))
    return slope, mean_y - slope * mean_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="450m", choices=sorted(SIZES))
    parser.add_argument("--topology", default="v5p-8")
    parser.add_argument("--layers", default="1,2,4,8", help="comma-separated layer counts")
    parser.add_argument("--max-host-gib", type=float, default=16.0,
                        help="stop a compile that needs more host RAM than this")
    parser.add_argument("--cache", default="", help="directory keeping finished compiles")
    parser.add_argument("--flags", default="",
                        help="config overrides for every compile, e.g. mesh.data=4,mesh.fsdp=16")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.layers.split(",")})
    if len(counts) < 2 or counts[0] < 1:
        parser.error("--layers needs at least two distinct positive counts, e.g. 1,2,4")
    try:
        topology = topo_lib.parse(args.topology)
        overrides = parse_overrides(args.flags)
        plan_lib.with_overrides(from_config_dict(openelm_config(args.size)), overrides)
    except (ValueError, TypeError, AttributeError) as err:  # ConfigError is a ValueError
        parser.error(str(err))
    print(f"{args.size} train step on {args.topology}, the model cut to L layers"
          + (f", with {args.flags}" if args.flags else ""))
    print(f"{'L':>3} {'host GiB':>9} {'code MiB':>9} {'temp GiB':>9} {'compile s':>10}")
    host, code = [], []
    for layers in counts:
        config = openelm_config(args.size)
        config.model.num_layers = layers
        config = plan_lib.with_overrides(from_config_dict(config), overrides)
        result = plan_in_child(config, topology, args, read_buffers=False)
        code_mib = (result.code_bytes or 0) / MIB
        host.append(result.host_peak_bytes / GIB)
        code.append(code_mib)
        temp = "-" if result.temp_bytes is None else f"{result.temp_bytes / GIB:.2f}"
        print(f"{layers:>3} {host[-1]:>9.2f} {code_mib:>9.1f} {temp:>9} "
              f"{result.compile_seconds or 0:>10.0f}")
    host_slope, host_zero = _slope(counts, host)
    code_slope, code_zero = _slope(counts, code)
    full = SIZES[args.size].num_layers
    print(f"per layer: {host_slope:.2f} GiB host RAM, {code_slope:.1f} MiB of TPU code "
          f"(intercepts {host_zero:.2f} GiB, {code_zero:.1f} MiB); "
          f"the {full}-layer preset by this line: {host_zero + host_slope * full:.1f} GiB, "
          f"{code_zero + code_slope * full:.0f} MiB")


if __name__ == "__main__":
    main()
