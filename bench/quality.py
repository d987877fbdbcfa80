"""The paper's claim: at equal embedding row sparsity, a group optimizer beats its
plain counterpart followed by magnitude pruning.

    python bench/quality.py [--quick] [--datasets criteo,avazu] [--seeds 3]
                            [--optimizers adam,amsgrad,adagrad,momentum,ftrl] [--out DIR]

For each dataset, seed and optimizer pair, the same DeepFM-style model
(examples/criteo_deepfm.py) is trained

* with the group optimizer for each strength `l21` of a grid (l1 = l2 = 0), on
  the tables and the `Dense` kernels (`regularize_dense=True`, the paper's
  setting),
* with the plain Keras optimizer (same learning rate and epochs), then pruned
  by magnitude (the rows of smallest L2 norm over all tables) to the row
  sparsity each group run reached: evaluated as pruned, and after fine-tuning
  `--finetune-steps` steps (one epoch by default) with the plain optimizer's
  trained state and the pruned rows held at zero (the strong form of the
  baseline).

It prints one table of test AUC and log loss against row sparsity (mean and
standard deviation over seeds), writes it as CSV and Markdown, and plots AUC
against sparsity to a PNG. `--quick` (one dataset, seed, optimizer and two
strengths, one epoch) runs in well under two minutes and checks its outputs
are sane.
"""

import argparse
import csv
import itertools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import log_loss, roc_auc_score  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import criteo_deepfm  # noqa: E402
import ctr_data  # noqa: E402

import group_lasso_tf as gl  # noqa: E402
from group_lasso_tf import pruning, sparsity  # noqa: E402

# optimizer -> (group class, plain factory, learning rate, l21 grid)
PAIRS = {
    "adam": (gl.GroupAdam, lambda lr: keras.optimizers.Adam(lr), 2e-3,
             [1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3]),
    "amsgrad": (gl.GroupAMSGrad, lambda lr: keras.optimizers.Adam(lr, amsgrad=True), 2e-3,
                [1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3]),
    "adagrad": (gl.GroupAdagrad, lambda lr: keras.optimizers.Adagrad(lr), 0.05,
                [0.25, 0.5, 1.0, 2.0, 4.0]),
    "momentum": (lambda **kw: gl.GroupMomentum(momentum=0.9, **kw),
                 lambda lr: keras.optimizers.SGD(lr, momentum=0.9), 0.05,
                 [0.25, 0.5, 1.0, 2.0, 4.0]),
    "ftrl": (gl.GroupFtrl, lambda lr: keras.optimizers.Ftrl(lr), 0.2,
             [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]),
}
LOADERS = {"criteo": ctr_data.load_criteo, "avazu": ctr_data.load_avazu}


def inputs(split):
    return [split.categorical, split.dense]


def evaluate(model, data):
    p = np.clip(model.predict(inputs(data.test), batch_size=2048, verbose=0).ravel(), 1e-7, 1 - 1e-7)
    # Zero rows over counted rows (never-trained rows left out, docs/sparsity.md).
    return (roc_auc_score(data.test.label, p), log_loss(data.test.label, p),
            sparsity.overall_sparsity(sparsity.embedding_sparsity(model)))


def train(data, optimizer, seed, epochs, batch_size=256):
    keras.utils.set_random_seed(seed)
    model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    model.fit(inputs(data.train), data.train.label, batch_size=batch_size, epochs=epochs,
              verbose=0, shuffle=True)
    return model


def prune_and_finetune(model, weights, optimizer_state, data, target, steps, batch_size=256):
    """Magnitude-prune the trained plain model to `target`; evaluate, fine-tune, evaluate.

    Fine-tuning continues with the plain optimizer's own trained state (a fresh
    Keras Ftrl would zero every row a batch does not touch on its first step),
    with the pruned rows held at zero after every batch.
    """
    model.set_weights(weights)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        variable.assign(value)
    pruning.magnitude_prune(model, target, per_table=False)
    pruned = evaluate(model, data)
    if steps <= 0:
        return pruned, pruned
    keep = pruning.GradualPruning(final_sparsity=target, initial_sparsity=target, begin_step=1,
                                  end_step=1, per_table=False)
    n = steps * batch_size
    idx = np.random.default_rng(0).permutation(len(data.train.label))
    idx = np.resize(idx, n)
    model.fit([data.train.categorical[idx], data.train.dense[idx]], data.train.label[idx],
              batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[keep])
    return pruned, evaluate(model, data)


def run(args):
    rows = []
    for dataset in args.datasets:
        data = LOADERS[dataset]()
        for name in args.optimizers:
            group_cls, plain, lr, grid = PAIRS[name]
            grid = grid[1::3] if args.quick else grid
            for seed in range(args.seeds):
                start = time.perf_counter()
                base = train(data, plain(lr), seed, args.epochs)
                base_weights = base.get_weights()
                base_state = [v.numpy() for v in base.optimizer.variables]
                auc, loss, _ = evaluate(base, data)
                rows.append(dict(dataset=dataset, optimizer=name, method="plain", l21=0.0,
                                 seed=seed, sparsity=0.0, auc=auc, logloss=loss))
                for l21 in grid:
                    # The paper's setting: the group term on every kernel too (the
                    # package's default since issue 14 is the tables only).
                    model = train(data, group_cls(learning_rate=lr, l21=l21, regularize_dense=True),
                                  seed, args.epochs)
                    auc, loss, s = evaluate(model, data)
                    rows.append(dict(dataset=dataset, optimizer=name, method="group", l21=l21,
                                     seed=seed, sparsity=s, auc=auc, logloss=loss))
                    (p_auc, p_loss, p_s), (f_auc, f_loss, f_s) = prune_and_finetune(
                        base, base_weights, base_state, data, s, args.finetune_steps)
                    rows.append(dict(dataset=dataset, optimizer=name, method="plain+prune",
                                     l21=l21, seed=seed, sparsity=p_s, auc=p_auc, logloss=p_loss))
                    rows.append(dict(dataset=dataset, optimizer=name, method="plain+prune+finetune",
                                     l21=l21, seed=seed, sparsity=f_s, auc=f_auc, logloss=f_loss))
                print(f"{dataset} {name} seed {seed}: {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
    return rows


def summarize(rows, by=("dataset", "optimizer", "method", "l21"), extra=None):
    """Mean and standard deviation over seeds of sparsity, AUC and log loss,
    per group of rows equal in the keys `by`; `extra(entry, rows)` may add
    fields computed from a group's rows."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    table = []
    for values, rs in groups.items():
        entry = dict(zip(by, values), seeds=len(rs))
        for key in ("sparsity", "auc", "logloss"):
            runs = np.array([r[key] for r in rs])
            entry[key] = float(runs.mean())
            entry[key + "_std"] = float(runs.std())
        if extra is not None:
            extra(entry, rs)
        table.append(entry)
    return table


def write_runs(path, rows):
    """Every run as a row of a CSV file (what `--from-csv` reads back); creates its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(table):
    lines = ["| dataset | optimizer | l21 | row sparsity | group AUC | plain+prune AUC | "
             "plain+prune+finetune AUC | group logloss | plain+prune+finetune logloss |",
             "|---|---|---|---|---|---|---|---|---|"]
    index = {(t["dataset"], t["optimizer"], t["method"], t["l21"]): t for t in table}
    for t in table:
        if t["method"] == "plain":
            lines.append(f"| {t['dataset']} | {t['optimizer']} | plain, unpruned | 0.0% | | | "
                         f"{t['auc']:.4f} ± {t['auc_std']:.4f} | | {t['logloss']:.4f} |")
        if t["method"] != "group":
            continue
        key = (t["dataset"], t["optimizer"])
        p = index[key + ("plain+prune", t["l21"])]
        f = index[key + ("plain+prune+finetune", t["l21"])]
        lines.append(
            f"| {t['dataset']} | {t['optimizer']} | {t['l21']:g} | "
            f"{t['sparsity']:.1%} ± {t['sparsity_std']:.1%} | "
            f"{t['auc']:.4f} ± {t['auc_std']:.4f} | {p['auc']:.4f} ± {p['auc_std']:.4f} | "
            f"{f['auc']:.4f} ± {f['auc_std']:.4f} | {t['logloss']:.4f} | {f['logloss']:.4f} |")
    return "\n".join(lines)


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({t["dataset"] for t in table})
    optimizers = sorted({t["optimizer"] for t in table})
    fig, axes = plt.subplots(len(datasets), len(optimizers),
                             figsize=(3.6 * len(optimizers), 3.2 * len(datasets)), squeeze=False)
    for (row, dataset), (col, optimizer) in itertools.product(enumerate(datasets),
                                                               enumerate(optimizers)):
        ax = axes[row][col]
        for method, style in (("group", "o-"), ("plain+prune", "s:"), ("plain+prune+finetune", "^--")):
            pts = sorted((t["sparsity"], t["auc"], t["auc_std"]) for t in table
                         if (t["dataset"], t["optimizer"], t["method"]) == (dataset, optimizer, method))
            if pts:
                x, y, e = map(np.array, zip(*pts))
                ax.errorbar(100 * x, y, yerr=e, fmt=style, label=method, capsize=2)
        ax.set_title(f"{dataset}, {optimizer}")
        ax.set_xlabel("embedding row sparsity (%)")
        ax.set_ylabel("test AUC")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def check_sane(rows):
    """--quick's self-check: every run trained and the numbers are in range."""
    for r in rows:
        assert 0.5 < r["auc"] <= 1.0, r
        assert 0.0 < r["logloss"] < 1.0, r
        assert 0.0 <= r["sparsity"] <= 1.0, r
    group = [r for r in rows if r["method"] == "group"]
    assert group and max(r["sparsity"] for r in group) > 0.0
    for g in group:  # the baseline was pruned to the group run's sparsity
        p = next(r for r in rows if r["method"] == "plain+prune" and r["l21"] == g["l21"]
                 and r["seed"] == g["seed"] and r["optimizer"] == g["optimizer"]
                 and r["dataset"] == g["dataset"])
        assert abs(p["sparsity"] - g["sparsity"]) < 1e-3, (p, g)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", default="criteo,avazu")
    parser.add_argument("--optimizers", default="adam,amsgrad,adagrad,momentum,ftrl")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-steps", type=int, default=29)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "quality"))
    parser.add_argument("--from-csv", help="summarize the runs of these quality_runs.csv files "
                                           "(comma-separated) instead of training")
    args = parser.parse_args(argv)
    args.datasets = args.datasets.split(",")
    args.optimizers = args.optimizers.split(",")
    if args.quick:
        args.datasets, args.optimizers = args.datasets[:1], args.optimizers[:1]
        args.seeds, args.epochs, args.finetune_steps = 1, 1, 5
    if args.from_csv:
        rows = []
        for path in args.from_csv.split(","):
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    for key in ("l21", "sparsity", "auc", "logloss"):
                        r[key] = float(r[key])
                    r["seed"] = int(r["seed"])
                    rows.append(r)
    else:
        rows = run(args)
    table = summarize(rows)
    write_runs(os.path.join(args.out, "quality_runs.csv"), rows)
    md = markdown(table)
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(md + "\n")
    plot(table, os.path.join(args.out, "quality.png"))
    print(md)
    if args.quick:
        check_sane(rows)
        print("quick run: outputs sane")
    return rows


if __name__ == "__main__":
    main()
