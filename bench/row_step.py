"""The C++ row step alone: nanoseconds per row, for every rule and a few row widths.

    python bench/row_step.py [--rows 10000] [--dims 8,16,64] [--ids 4096]
                             [--baseline OTHER/_core*.so] [--quick]

Runs the pybind11 module (`group_lasso_tf._core`, the same headers as the
op library, serially) on `--ids` distinct ids of a float32 table of `--rows`
rows (10,000 rows: every array stays in cache, so this is the row step's
arithmetic, not memory), default hyperparameters of each rule; a row's time
is (step - empty step) / ids, median of repeats. With `--baseline`, another
build of `_core` (e.g. one built from an older commit) is loaded from that
path and timed side by side, interleaved, on the same arrays and ids; the
last column is baseline / this build.
"""

import argparse
import importlib.machinery
import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_seconds  # noqa: E402

from group_lasso_tf import _core  # noqa: E402

# Each rule's hyperparameters in op order (_core.HYPER_NAMES): Keras's defaults.
HYPER = {
    "adam": [0.9, 0.999, 0.9, 0.999, 1e-7],
    "amsgrad": [0.9, 0.999, 0.9, 0.999, 1e-7],
    "adahessian": [0.9, 0.999, 0.9, 0.999, 1e-4, 1.0],
    "adagrad": [1e-7],
    "momentum": [0.9],
    "ftrl": [0.0, 0.0, -0.5],
    "rmsprop": [0.9, 0.0, 1e-7],
}


def load_core(path):
    """A `_core` extension module loaded from `path` (not put in sys.modules)."""
    loader = importlib.machinery.ExtensionFileLoader("_core", path)
    spec = importlib.util.spec_from_file_location("_core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def ns_per_row(core, rule, var, slots, ids, grad, repeats):
    hess = np.abs(grad) if rule in core.HESSIAN_RULES else None

    def step(n):
        core.apply_sparse(rule, var, slots, grad[:n], ids[:n], 1e-3, 1e-6, 1e-4, 0.0,
                          HYPER[rule], hessian=None if hess is None else hess[:n])

    full = median_seconds(lambda: step(len(ids)), repeats, warmup=2)
    empty = median_seconds(lambda: step(0), repeats, warmup=2)
    return max(full - empty, 0.0) / len(ids) * 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dims", default="8,16,64")
    parser.add_argument("--ids", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--baseline", help="path of another build's _core extension module")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.ids, args.repeats = "16", 512, 5
    unknown = set(_core.RULES) - set(HYPER)
    if unknown:
        parser.error(f"no hyperparameters here for rules {sorted(unknown)}")
    builds = {"this build": _core}
    if args.baseline:
        builds["baseline"] = load_core(args.baseline)
    rng = np.random.default_rng(0)
    print(f"float32 table of {args.rows:,} rows, {args.ids:,} distinct ids, serial; "
          "ns per row (median of step - empty step)")
    header = f"{'rule':<12}{'dim':>5}{'this build':>12}"
    if args.baseline:
        header += f"{'baseline':>10}{'speedup':>9}"
    print(header)
    results = []
    for rule in _core.RULES:
        for d in map(int, args.dims.split(",")):
            ids = rng.permutation(args.rows)[:args.ids].astype(np.int32)
            grad = (rng.normal(size=(args.ids, d)) * 1e-3).astype(np.float32)
            var = rng.uniform(-0.05, 0.05, (args.rows, d)).astype(np.float32)
            slots = [np.full((args.rows, d), 1e-3, np.float32) for _ in _core.SLOT_NAMES[rule]]
            times = {name: [] for name in builds}
            for _ in range(3):  # interleaved rounds
                for name, core in builds.items():
                    times[name].append(ns_per_row(core, rule, var, slots, ids, grad,
                                                  args.repeats))
            this = float(np.median(times["this build"]))
            line = f"{rule:<12}{d:>5}{this:>12.1f}"
            if args.baseline:
                base = float(np.median(times["baseline"]))
                line += f"{base:>10.1f}{base / this:>8.2f}x"
            print(line)
            results.append((rule, d, this))
    if args.quick:
        assert all(np.isfinite(ns) and ns >= 0 for *_, ns in results), results
        assert np.all(np.isfinite(var)), "the steps left non-finite weights"
        print("quick run: outputs sane")
    return results


if __name__ == "__main__":
    main()
