"""What one fixed `l21` does: a sweep over 1e-6..1e-2, and sparsity over the steps.

    python bench/l21_sweep.py [--quick] [--datasets criteo,avazu] [--tasks 3]
                              [--out DIR] [--from-csv RUNS]

Sweep: GroupAdam (learning rate 2e-3) at fixed `l21` from 1e-6 to 1e-2 on the
DeepFM model of examples/criteo_deepfm.py (Criteo and Avazu samples, 4
epochs, batch 256) and on `--tasks` tasks of bench/ctr_tasks.py with two
hidden layers (64, 32), each with the group term on every kernel
(`regularize_dense=True`, the paper's setting) and on the embedding tables
only (the default).
Per run: test AUC, embedding row sparsity, the largest fraction of zero
rows of any `Dense` kernel, and whether the optimizer warned about it
(`DEAD_ROW_FRACTION`); the script fails if a kernel reached that fraction
without the warning.

Drift: on Criteo, row sparsity after every step at three fixed `l21` over 8
epochs, and the same with `SparsityTarget(0.8)`.

Writes sweep.csv, sweep.md, sweep.png and drift.png into --out (default
docs/sparsity_sweep).
"""

import argparse
import csv
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import criteo_deepfm  # noqa: E402
import ctr_tasks  # noqa: E402
import quality  # noqa: E402

import group_lasso_tf as gl  # noqa: E402
from group_lasso_tf import sparsity  # noqa: E402
from group_lasso_tf.optimizers.base import DEAD_ROW_FRACTION  # noqa: E402

LR, EPOCHS, BATCH = 2e-3, 4, 256
GRID = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
CONFIGS = {"every kernel": {"regularize_dense": True}, "tables only (default)": {}}


def dense_kernels(model):
    return [layer.kernel for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dense)]


def measure(model, auc, warned):
    kernels = {k.path: float(np.mean(np.all(k.numpy() == 0, axis=1)))
               for k in dense_kernels(model)}
    worst = max(kernels, key=kernels.get)
    unwarned = [p for p, f in kernels.items() if f >= DEAD_ROW_FRACTION
                and not any(p in w for w in warned)]
    return dict(auc=auc, embedding_sparsity=sparsity.overall_sparsity(
        sparsity.embedding_sparsity(model)), dense_sparsity=kernels[worst], dense_kernel=worst,
        warned=len(warned), unwarned=len(unwarned))


def fit_recording(fit):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, auc = fit()
    return model, auc, [str(w.message) for w in caught if "group_lasso_tf:" in str(w.message)]


def sweep_dataset(name, grid, epochs):
    data = quality.LOADERS[name]()
    rows = []
    for config, kwargs in CONFIGS.items():
        for l21 in grid:
            def fit():
                keras.utils.set_random_seed(0)
                model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
                model.compile(optimizer=gl.GroupAdam(LR, l21=l21, **kwargs),
                              loss="binary_crossentropy")
                model.fit(quality.inputs(data.train), data.train.label, batch_size=BATCH,
                          epochs=epochs, verbose=0, shuffle=True)
                return model, quality.evaluate(model, data)[0]

            model, auc, warned = fit_recording(fit)
            rows.append(dict(data=name, config=config, l21=l21, **measure(model, auc, warned)))
            print(rows[-1], flush=True)
    return rows


def sweep_tasks(count, grid, seed, max_steps=600):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        task = ctr_tasks.draw_task(rng, optimizer="adam", epochs=EPOCHS, max_steps=max_steps,
                                   max_rows=10_000 if max_steps < 600 else None)
        task.hidden, task.learning_rate, task.batch_size = (64, 32), LR, BATCH
        for config, kwargs in CONFIGS.items():
            for l21 in grid:
                def fit():
                    model, _, x, y = ctr_tasks.build(task, l21=l21, **kwargs)
                    held_x, held_y = ctr_tasks.data(task, samples=4000, stream=1)
                    model.fit(x, y, batch_size=task.batch_size, epochs=task.epochs, verbose=0)
                    p = model.predict(held_x, batch_size=4096, verbose=0).ravel()
                    return model, roc_auc_score(held_y, p)

                model, auc, warned = fit_recording(fit)
                rows.append(dict(data=f"generated {i}", config=config, l21=l21,
                                 **measure(model, auc, warned)))
                print(rows[-1], task.describe(), flush=True)
    return rows


class StepSparsity(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.sparsity = []

    def on_train_batch_end(self, batch, logs=None):
        self.sparsity.append(sparsity.overall_sparsity(sparsity.embedding_sparsity(self.model)))


def drift(epochs, l21s=(3e-4, 1e-3, 3e-3)):
    data = quality.LOADERS["criteo"]()
    curves = {}
    for label, l21, callbacks in [(f"l21 = {v:g}", v, []) for v in l21s] + [
            ("SparsityTarget(0.8)", 1e-4, [sparsity.SparsityTarget(0.8)])]:
        keras.utils.set_random_seed(0)
        model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
        model.compile(optimizer=gl.GroupAdam(LR, l21=l21), loss="binary_crossentropy")
        record = StepSparsity()
        model.fit(quality.inputs(data.train), data.train.label, batch_size=BATCH,
                  epochs=epochs, verbose=0, shuffle=True, callbacks=callbacks + [record])
        curves[label] = record.sparsity
        print(label, record.sparsity[::len(record.sparsity) // epochs], flush=True)
    return curves


def markdown(rows):
    lines = ["| data | group term on | " + " | ".join(f"{v:g}" for v in GRID) + " |",
             "|---|---|" + "---|" * len(GRID)]
    index = {(r["data"], r["config"], r["l21"]): r for r in rows}
    for data in dict.fromkeys(r["data"] for r in rows):
        for config in CONFIGS:
            cells = []
            for v in GRID:
                r = index.get((data, config, v))
                cells.append("" if r is None else
                             f"{r['auc']:.3f} / {r['embedding_sparsity']:.0%} / "
                             f"{r['dense_sparsity']:.0%}{' W' if r['warned'] else ''}")
            lines.append(f"| {data} | {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, curves, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(2, len(datas), figsize=(3.6 * len(datas), 6), squeeze=False)
    for col, data in enumerate(datas):
        for config, style in zip(CONFIGS, ("-", "--")):
            rs = sorted((r for r in rows if r["data"] == data and r["config"] == config),
                        key=lambda r: r["l21"])
            x = [r["l21"] for r in rs]
            axes[0][col].semilogx(x, [r["auc"] for r in rs], "k" + style, label=config)
            axes[1][col].semilogx(x, [r["embedding_sparsity"] for r in rs], "C0" + style,
                                  label=f"embeddings ({config})")
            axes[1][col].semilogx(x, [r["dense_sparsity"] for r in rs], "C3" + style,
                                  label=f"worst Dense kernel ({config})")
        axes[0][col].set_title(data)
        axes[0][col].set_ylabel("test AUC")
        axes[1][col].set_ylabel("zero-row fraction")
        axes[1][col].set_xlabel("l21 (GroupAdam, fixed)")
        axes[1][col].axhline(DEAD_ROW_FRACTION, color="grey", lw=0.5)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "sweep.png"), dpi=80)
    plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, values in curves.items():
            ax.plot(range(1, len(values) + 1), values, label=label)
        ax.set_xlabel("training step (Criteo sample, GroupAdam, batch 256)")
        ax.set_ylabel("embedding row sparsity")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "drift.png"), dpi=90)
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", default="criteo,avazu")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drift-epochs", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "sparsity_sweep"))
    parser.add_argument("--from-csv", help="summarize this sweep.csv again (no drift plot)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    curves = None
    if args.from_csv:
        with open(args.from_csv, newline="") as f:
            rows = [{k: (v if k in ("data", "config", "dense_kernel") else float(v))
                     for k, v in r.items()} for r in csv.DictReader(f)]
    else:
        grid = [1e-5, 1e-2] if args.quick else GRID
        rows = []
        for name in ([] if args.quick else args.datasets.split(",")):
            rows += sweep_dataset(name, grid, EPOCHS)
        rows += sweep_tasks(1 if args.quick else args.tasks, grid, args.seed,
                            100 if args.quick else 600)
        if not args.quick:
            curves = drift(args.drift_epochs)
        quality.write_runs(os.path.join(args.out, "sweep.csv"), rows)
    md = markdown(rows)
    with open(os.path.join(args.out, "sweep.md"), "w") as f:
        f.write("Test AUC / embedding row sparsity / largest zero-row fraction of a Dense "
                "kernel; W: the optimizer warned of a dead layer.\n\n" + md + "\n")
    plot(rows, curves, args.out)
    print(md)
    unwarned = [r for r in rows if r["unwarned"]]
    assert not unwarned, f"Dense kernels >= {DEAD_ROW_FRACTION:.0%} zero without a warning: {unwarned}"
    if args.quick:
        assert all(0.5 <= r["auc"] <= 1 for r in rows), rows
        print("quick run: outputs sane")
    return rows


if __name__ == "__main__":
    main()
