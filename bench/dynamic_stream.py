"""A DynamicEmbedding under a stream of new ids, steered by SparsityTarget(0.9),
and its AUC against a fixed table on Criteo at the same sparsity.

    python bench/dynamic_stream.py [--distinct 10000000] [--capacity 1000000]
                                   [--seeds 3] [--epochs 4] [--only stream|criteo] [--quick]

`stream`: `--distinct` hashed 64-bit ids (never seen before, a bijection of
their rank) reach a `--capacity`-row DynamicEmbedding (dim 16,
on_full="drop") through `model.fit` with GroupAdam and
`sparsity.SparsityTarget(0.9)`. Each step is 2,048 examples of 4 ids: half
of the ids are new, half are drawn with a Zipf law over the ids seen so far
(the first ones are the hot ones). An example's label is drawn from the
logistic of the sum of its ids' effects (a fixed function of the id), so
only ids seen often can be learned. Every 5% of the stream the table's
counters and the process's resident memory (RSS, /proc/self/statm) are
recorded; printed: the table, RSS growth after warm-up (the first 20%) and
peak RSS (ru_maxrss).

`criteo`: the DeepFM-style model of examples/criteo_deepfm.py on the Criteo
sample, GroupAdam with SparsityTarget(0.9) on every table, `--epochs`,
`--seeds`: fixed `Embedding` tables over the vocabulary against
`DynamicEmbedding` tables over the raw hashed ids (no vocabulary pass);
test AUC and reached sparsity of each, and their difference.
"""

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import criteo_deepfm  # noqa: E402
import ctr_data  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

DIM, IDS_PER_EXAMPLE, EXAMPLES_PER_STEP = 16, 4, 2048
GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # odd: rank -> id is a bijection of 64-bit values


def id_of(rank):
    """The hashed 64-bit id of a rank (int64 bits)."""
    with np.errstate(over="ignore"):
        return (rank.astype(np.uint64) * GOLDEN).view(np.int64)


def effect_of(ids):
    """Each id's fixed effect on the logit, in [-2, 2)."""
    with np.errstate(over="ignore"):
        h = (ids.view(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(40)
    return (h % np.uint64(4000)).astype(np.float32) / 1000.0 - 2.0


class Stream(keras.utils.PyDataset):
    """Batch `step`: EXAMPLES_PER_STEP examples whose ids are half new, half
    Zipf over the ids seen before the step (a function of the step alone)."""

    def __init__(self, distinct):
        super().__init__()
        self.new_per_step = EXAMPLES_PER_STEP * IDS_PER_EXAMPLE // 2
        self.steps = -(-distinct // self.new_per_step)
        self.distinct = distinct

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        rng = np.random.default_rng(step)
        seen = step * self.new_per_step
        new = np.arange(seen, min(seen + self.new_per_step, self.distinct))
        old = rng.zipf(1.2, size=self.new_per_step) - 1
        old = old[old < max(seen, 1)] if seen else np.zeros(0, np.int64)
        ranks = np.concatenate([new, old])
        ranks = np.resize(rng.permutation(ranks), EXAMPLES_PER_STEP * IDS_PER_EXAMPLE)
        ids = id_of(ranks).reshape(EXAMPLES_PER_STEP, IDS_PER_EXAMPLE)
        logit = effect_of(ids).sum(axis=1)
        labels = (rng.random(EXAMPLES_PER_STEP) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        return ids, labels[:, None]


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Recorder(keras.callbacks.Callback):
    def __init__(self, table, every):
        super().__init__()
        self.table, self.every, self.rows = table, every, []

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0 or batch + 1 == self.params["steps"]:
            s = self.table.table_stats()
            self.rows.append(dict(step=batch + 1, rss=rss_mb(), sparsity=self.table.sparsity(),
                                  **s))


def stream(args):
    keras.utils.set_random_seed(0)
    data = Stream(args.distinct)
    table = gl.layers.DynamicEmbedding(DIM, capacity=args.capacity, name="ids")
    inputs = keras.Input((IDS_PER_EXAMPLE,), dtype="int64")
    h = keras.layers.Flatten()(table(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=gl.GroupAdam(learning_rate=2e-3, l1=1e-6, l21=1e-5),
                  loss="binary_crossentropy")
    recorder = Recorder(table, max(len(data) // 20, 1))
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0,
              callbacks=[gl.sparsity.SparsityTarget(0.9), recorder])
    seconds = time.perf_counter() - start
    print(f"\nstream: {args.distinct:,} distinct ids, {len(data)} steps of "
          f"{EXAMPLES_PER_STEP * IDS_PER_EXAMPLE:,} ids, pool {args.capacity:,} x {DIM}, "
          f"GroupAdam + SparsityTarget(0.9), {seconds:.0f} s")
    print(f"{'step':>6}{'admitted':>12}{'live':>10}{'released':>12}{'dropped':>10}"
          f"{'live/adm':>10}{'sparsity':>10}{'RSS MB':>9}")
    for r in recorder.rows:
        print(f"{r['step']:>6}{r['admitted']:>12,}{r['live']:>10,}{r['released']:>12,}"
              f"{r['dropped']:>10,}{r['live'] / max(r['admitted'], 1):>10.3f}"
              f"{r['sparsity']:>10.3f}{r['rss']:>9.0f}")
    warm = [r["rss"] for r in recorder.rows if r["step"] >= 0.2 * len(data)]
    growth = warm[-1] - warm[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS after warm-up (20% of the stream): {warm[0]:.0f} -> {warm[-1]:.0f} MB "
          f"({growth:+.0f} MB), range {min(warm):.0f}-{max(warm):.0f}; peak {peak:.0f} MB")
    return recorder.rows, growth


def criteo_run(dynamic, seed, epochs, capacity):
    keras.utils.set_random_seed(seed)
    if dynamic:
        data = criteo_deepfm.hashed(ctr_data.load_criteo_raw())
        model = criteo_deepfm.build_deepfm(len(data.field_names), data.train.dense.shape[1],
                                           capacity=capacity)
    else:
        data = ctr_data.load_criteo()
        model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
    model.compile(optimizer=gl.GroupAdam(learning_rate=2e-3, l1=1e-5, l21=1e-4),
                  loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    model.fit([data.train.categorical, data.train.dense], data.train.label, batch_size=256,
              epochs=epochs, verbose=0, callbacks=[gl.sparsity.SparsityTarget(0.9)])
    _, auc = model.evaluate([data.test.categorical, data.test.dense], data.test.label,
                            batch_size=1024, verbose=0)
    if dynamic:
        stats = [t.table_stats() for t in gl.sparsity.dynamic_tables(model)]
        live = sum(s["live"] for s in stats)
        kept = sum(s["admitted"] - s["evicted"] for s in stats)
        sparsity = 1 - live / max(kept, 1)
    else:
        counts = criteo_deepfm.embedding_row_sparsity(model).values()
        sparsity = sum(z for z, _ in counts) / sum(r for _, r in counts)
    return auc, sparsity


def criteo(args):
    results = {"fixed": [], "dynamic": []}
    for seed in range(args.seeds):
        for name in results:
            results[name].append(criteo_run(name == "dynamic", seed, args.epochs, args.capacity_criteo))
    print(f"\nCriteo sample, DeepFM, GroupAdam + SparsityTarget(0.9), {args.epochs} epochs, "
          f"seeds 0-{args.seeds - 1}")
    print(f"{'tables':<9}{'test AUC per seed':<30}{'mean AUC':>10}{'sparsity':>10}")
    for name, runs in results.items():
        aucs = " ".join(f"{a:.4f}" for a, _ in runs)
        print(f"{name:<9}{aucs:<30}{np.mean([a for a, _ in runs]):>10.4f}"
              f"{np.mean([s for _, s in runs]):>10.3f}")
    diff = np.mean([a for a, _ in results["dynamic"]]) - np.mean([a for a, _ in results["fixed"]])
    print(f"dynamic - fixed: {diff:+.4f} AUC")
    return results, diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=10_000_000)
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--capacity-criteo", type=int, default=4096,
                        help="rows of each field's DynamicEmbedding on Criteo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", choices=["stream", "criteo"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.distinct, args.capacity, args.seeds, args.epochs = 60_000, 8_000, 1, 1
    rows = results = None
    if args.only != "criteo":
        rows, _ = stream(args)
    if args.only != "stream":
        results, _ = criteo(args)
    if args.quick:
        last = rows[-1]
        assert last["admitted"] > 0 and 0 < last["live"] <= args.capacity, last
        assert all(r["rss"] > 0 for r in rows), rows
        for runs in results.values():
            assert all(0.5 < a <= 1 and 0 <= s < 1 for a, s in runs), results
        print("quick run: outputs sane")
    return rows, results


if __name__ == "__main__":
    main()
