"""Reaching a requested row sparsity: SparsityTarget against a grid-searched fixed l21
and against Keras Adam + magnitude pruning + fine-tuning.

    python bench/sparsity_target.py [--quick] [--datasets criteo,avazu] [--seeds 3]
                                    [--targets 0.5,0.8,0.9] [--only BLOCKS] [--out DIR]
                                    [--from-csv RUNS]

On each dataset (the DeepFM-style model of examples/criteo_deepfm.py, 4
epochs, batch 256, the learning rates of bench/quality.py) and seed:

* `steered`: GroupAdam / GroupFtrl with `sparsity.SparsityTarget(target)`
  steering `l21` (started at 1e-4 / 1e-3);
* `fixed`: the same optimizer with a fixed `l21`, found for each target by
  bisection on log(l21) with seed 0 until the sparsity is within 3 points
  (at most 10 runs), then trained with every seed;
* `adam+prune+finetune`: Keras Adam, then the smallest embedding rows pruned to
  the target and one more epoch with the pruned rows held at zero
  (bench/quality.py's baseline);
* zero strengths: GroupAdam and GroupFtrl with `lazy=True` and `lazy=False`
  against Keras `Adam` and `Ftrl`.

Writes runs.csv, results.md (mean ± std over seeds) and trajectory.png (row
sparsity, its reference and l21 over the steps of the steered GroupAdam runs,
seed 0) into --out (default docs/sparsity_target).
"""

import argparse
import csv
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import criteo_deepfm  # noqa: E402
import quality  # noqa: E402

import group_lasso_tf as gl  # noqa: E402
from group_lasso_tf import sparsity  # noqa: E402

EPOCHS, BATCH = 4, 256
# optimizer -> (group class, Keras class, learning rate, l21 to start steering from,
#               bisection bounds of a fixed l21)
GROUP = {
    "adam": (gl.GroupAdam, keras.optimizers.Adam, 2e-3, 1e-4, (1e-5, 1e-2)),
    "ftrl": (gl.GroupFtrl, keras.optimizers.Ftrl, 0.2, 1e-3, (1e-5, 1e-1)),
}


def fit(data, optimizer, seed, callbacks=(), epochs=None):
    epochs = epochs or EPOCHS
    keras.utils.set_random_seed(seed)
    model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    model.fit(quality.inputs(data.train), data.train.label, batch_size=BATCH, epochs=epochs,
              verbose=0, shuffle=True, callbacks=list(callbacks))
    return model


def row(dataset, optimizer, method, target, seed, model_or_metrics, l21=float("nan")):
    auc, loss, s = (model_or_metrics if isinstance(model_or_metrics, tuple)
                    else quality.evaluate(model_or_metrics, data_cache[dataset]))
    return dict(dataset=dataset, optimizer=optimizer, method=method, target=target, seed=seed,
                l21=l21, sparsity=s, auc=auc, logloss=loss)


data_cache = {}


def steered(dataset, name, target, seed, trajectories, lr=None, epochs=None):
    cls, _, default_lr, start, _ = GROUP[name]
    lr = default_lr if lr is None else lr
    control = sparsity.SparsityTarget(target)
    model = fit(data_cache[dataset], cls(learning_rate=lr, l21=start), seed, [control], epochs)
    if seed == 0:
        trajectories[(dataset, name, target)] = control.history
    return row(dataset, name, "steered", target, seed, model, control.history["l21"][-1])


def check_sane(rows, targets):
    """--quick's self-check: runs trained, steering reached its target."""
    for r in rows:
        assert 0.5 < r["auc"] <= 1.0, r
        assert 0.0 <= r["sparsity"] <= 1.0, r
    for r in rows:
        if r["method"] == "steered":
            assert abs(r["sparsity"] - r["target"]) <= 0.02, r
    assert {r["method"] for r in rows} >= {"steered", "fixed", "adam+prune+finetune", "keras"}


def search_fixed(dataset, name, target, tolerance=0.03, max_runs=10):
    """log-bisection for a fixed l21 reaching `target` with seed 0: (l21, model)."""
    cls, _, lr, _, (lo, hi) = GROUP[name]
    best = None
    for _ in range(max_runs):
        l21 = math.sqrt(lo * hi)
        model = fit(data_cache[dataset], cls(learning_rate=lr, l21=l21), 0)
        _, _, s = quality.evaluate(model, data_cache[dataset])
        if best is None or abs(s - target) < abs(best[2] - target):
            best = (l21, model, s)
        if abs(s - target) <= tolerance:
            break
        lo, hi = (l21, hi) if s < target else (lo, l21)
    return best[0], best[1]


BLOCKS = ("steered", "baseline", "zero", "fixed")


def block_of(method):
    """Which block of `run` makes rows of this method (for --only)."""
    if method in ("steered", "fixed"):
        return method
    return "zero" if method.startswith("zero") else "baseline"


def run(args):
    rows, trajectories = [], {}
    only = set(args.only)
    for dataset in args.datasets:
        data_cache[dataset] = quality.LOADERS[dataset]()
        data = data_cache[dataset]
        start = time.perf_counter()
        for seed in range(args.seeds):
            for name in args.optimizers if "steered" in only else ():
                for target in args.targets:
                    rows.append(steered(dataset, name, target, seed, trajectories))
            if "baseline" not in only:
                continue
            # Keras Adam, then magnitude pruning (+ fine-tuning) to each target.
            adam = fit(data, keras.optimizers.Adam(GROUP["adam"][2]), seed)
            weights = adam.get_weights()
            state = [v.numpy() for v in adam.optimizer.variables]
            rows.append(row(dataset, "adam", "keras", 0.0, seed, adam))
            for target in args.targets:
                pruned, tuned = quality.prune_and_finetune(
                    adam, weights, state, data, target, args.finetune_steps)
                rows.append(row(dataset, "adam", "adam+prune", target, seed, pruned))
                rows.append(row(dataset, "adam", "adam+prune+finetune", target, seed, tuned))
        for seed in range(args.seeds) if "zero" in only else ():
            # Zero strengths: lazy and not, against Keras.
            for name in args.optimizers:
                cls, keras_cls, lr, _, _ = GROUP[name]
                if name != "adam":
                    rows.append(row(dataset, name, "keras", 0.0, seed, fit(data, keras_cls(lr), seed)))
                for lazy in (True, False):
                    model = fit(data, cls(learning_rate=lr, lazy=lazy), seed)
                    rows.append(row(dataset, name, f"zero strengths, lazy={lazy}", 0.0, seed,
                                    model, 0.0))
        # Fixed l21 by grid (bisection) search with seed 0, then every seed.
        for name in args.optimizers if "fixed" in only else ():
            cls, _, lr, _, _ = GROUP[name]
            for target in args.targets:
                l21, model = search_fixed(dataset, name, target, max_runs=args.search_runs)
                rows.append(row(dataset, name, "fixed", target, 0, model, l21))
                for seed in range(1, args.seeds):
                    rows.append(row(dataset, name, "fixed", target, seed,
                                    fit(data, cls(learning_rate=lr, l21=l21), seed), l21))
        print(f"{dataset}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows, trajectories


def read_runs(path, keep=lambda r: True):
    with open(path, newline="") as f:
        return [r for r in ({k: (v if k in ("dataset", "optimizer", "method") else float(v))
                             for k, v in row.items()} for row in csv.DictReader(f)) if keep(r)]


def summarize(rows):
    """quality.summarize per (dataset, optimizer, method, target), with each
    group's mean l21 and its largest |sparsity - target| over the seeds."""
    def extra(entry, rs):
        entry["l21"] = float(np.mean([r["l21"] for r in rs]))
        entry["max_miss"] = float(max(abs(r["sparsity"] - entry["target"]) for r in rs))

    return quality.summarize(rows, by=("dataset", "optimizer", "method", "target"), extra=extra)


def markdown(table):
    index = {(t["dataset"], t["optimizer"], t["method"], t["target"]): t for t in table}
    datasets = sorted({t["dataset"] for t in table})
    targets = sorted({t["target"] for t in table if t["method"] == "steered"})
    optimizers = sorted({t["optimizer"] for t in table if t["method"] == "steered"})

    def cell(t, sparsity_too=True):
        if t is None:
            return ""
        text = f"{t['auc']:.4f} ± {t['auc_std']:.4f}"
        return text + (f" ({t['sparsity']:.1%})" if sparsity_too else "")

    lines = ["Test AUC, mean ± std over seeds (row sparsity reached, mean).", "",
             "| dataset | target | optimizer | steered (SparsityTarget) | worst miss | "
             "fixed l21 (grid) | l21 | worst miss | Keras Adam + prune | + fine-tune |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        for target in targets:
            for name in optimizers:
                s = index.get((dataset, name, "steered", target))
                f = index.get((dataset, name, "fixed", target))
                p = index.get((dataset, "adam", "adam+prune", target))
                ft = index.get((dataset, "adam", "adam+prune+finetune", target))
                lines.append(
                    f"| {dataset} | {target:.0%} | Group{name.capitalize() if name != 'ftrl' else 'Ftrl'} "
                    f"| {cell(s)} | {100 * s['max_miss']:.1f} pts | {cell(f)} | {f['l21']:.3g} "
                    f"| {100 * f['max_miss']:.1f} pts | {cell(p)} | {cell(ft)} |")
    lines += ["", "Zero strengths (no regularization): what lazy row updates cost or gain.", "",
              "| dataset | optimizer | Keras | group, lazy=True | group, lazy=False |",
              "|---|---|---|---|---|"]
    for dataset in datasets:
        for name in optimizers:
            k = index.get((dataset, name, "keras", 0.0))
            lz = index.get((dataset, name, "zero strengths, lazy=True", 0.0))
            nl = index.get((dataset, name, "zero strengths, lazy=False", 0.0))
            lines.append(f"| {dataset} | {name} | {cell(k, False)} | {cell(lz, False)} | "
                         f"{cell(nl, False)} |")
    return "\n".join(lines)


def plot(trajectories, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(k for k in trajectories if k[1] == "adam")
    datasets = sorted({k[0] for k in keys})
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 6.5), squeeze=False)
    for col, dataset in enumerate(datasets):
        for key in [k for k in keys if k[0] == dataset]:
            h = trajectories[key]
            # Before each update: what the steps since the last one left.
            line, = axes[0][col].plot(h["step"], h["drifted"], label=f"target {key[2]:.0%}")
            axes[0][col].plot(h["step"], h["reference"], ":", color=line.get_color())
            axes[1][col].semilogy(h["step"], h["l21"], color=line.get_color(),
                                  label=f"target {key[2]:.0%}")
        axes[0][col].set_title(f"{dataset}, GroupAdam + SparsityTarget\n(solid: before each "
                               "update, dotted: the reference it sets)", fontsize=9)
        axes[0][col].set_ylabel("embedding row sparsity")
        axes[0][col].set_ylim(0, 1)
        axes[1][col].set_ylabel("l21")
        axes[1][col].set_xlabel("training step")
        axes[0][col].legend(fontsize=8)
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one dataset, seed, optimizer and target; checks the outputs")
    parser.add_argument("--datasets", default="criteo,avazu")
    parser.add_argument("--optimizers", default="adam,ftrl")
    parser.add_argument("--targets", default="0.5,0.8,0.9")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--finetune-steps", type=int, default=29)
    parser.add_argument("--search-runs", type=int, default=10,
                        help="most trainings of the bisection for a fixed l21")
    parser.add_argument("--only", default=",".join(BLOCKS),
                        help="run only these blocks of " + ",".join(BLOCKS) + "; the rows of "
                             "the others are kept from --out's runs.csv")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "sparsity_target"))
    parser.add_argument("--from-csv", help="summarize this runs.csv again instead of training "
                                           "(keeps the trajectory plot)")
    args = parser.parse_args(argv)
    if args.from_csv:
        rows = read_runs(args.from_csv)
        md = markdown(summarize(rows))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(md + "\n")
        print(md)
        return rows, None
    args.datasets = args.datasets.split(",")
    args.optimizers = args.optimizers.split(",")
    args.targets = [float(t) for t in args.targets.split(",")]
    args.only = args.only.split(",")
    if set(args.only) - set(BLOCKS):
        parser.error(f"--only takes some of {','.join(BLOCKS)}")
    if args.quick:
        global EPOCHS
        args.datasets, args.optimizers, args.targets = args.datasets[:1], ["adam"], [0.8]
        args.seeds, args.finetune_steps, args.search_runs, EPOCHS = 1, 5, 2, 1
    rows, trajectories = run(args)
    if args.quick:
        check_sane(rows, args.targets)
        print("quick run: outputs sane")
    elif set(args.only) != set(BLOCKS):
        rows = read_runs(os.path.join(args.out, "runs.csv"),
                         keep=lambda r: block_of(r["method"]) not in args.only) + rows
    quality.write_runs(os.path.join(args.out, "runs.csv"), rows)
    table = summarize(rows)
    md = markdown(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    if trajectories:
        plot(trajectories, os.path.join(args.out, "trajectory.png"))
    print(md)
    return rows, table


if __name__ == "__main__":
    main()
