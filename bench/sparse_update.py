"""Time of one sparse (embedding) update step, methods side by side in one run.

    python bench/sparse_update.py [--rows 1000000] [--dim 32] [--ids 4096]
                                  [--steps 30] [--methods a,b,...]
    python bench/sparse_update.py --grid [--quick]

Every method updates the same [rows, dim] float32 table from the same
tf.IndexedSlices gradient (ids drawn from a Zipf law, duplicates included),
inside a tf.function, on TensorFlow's default thread settings. The table
prints the median time per step and its ratio to the first method, so that
comparisons hold on a shared, noisy machine.

`--grid` runs tables of 10^5, 10^6 and 10^7 rows, dims 8, 16 and 64, 4,096
and 65,536 ids per step, and adds for the fused Group Adam op the bytes one
step must move (touched rows of var and its 3 slots read and written once,
plus the gradient and ids read) over its time, as a fraction of this
machine's copy bandwidth measured in the same run (a large NumPy copy).
Keras's densifying Adam runs on tables up to 10^7 x 8 floats (beyond, one of
its steps takes seconds); the 10^7 x 64 table is left out (10 GB for var and
slots on a 24 GB machine). `--quick` is a small smoke run.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_seconds, reference_path  # noqa: E402

import group_lasso_tf as gl  # noqa: E402


def zipf_ids(rng, rows, n, a=1.2):
    """n ids in [0, rows) with a Zipf-like law, shuffled so hot ids are spread."""
    ranks = rng.zipf(a, size=n) - 1
    ranks = ranks[ranks < rows] if rows else ranks
    while ranks.size < n:
        more = rng.zipf(a, size=n) - 1
        ranks = np.concatenate([ranks, more[more < rows]])
    # Distinct ranks go to distinct random rows, so hot ids are spread over the table.
    unique, inverse = np.unique(ranks[:n], return_inverse=True)
    targets = rng.choice(rows, size=unique.size, replace=False)
    return targets[inverse].astype(np.int64)


def keras_optimizer_step(opt_factory):
    def make(table, grad):
        opt = opt_factory()
        opt.build([table])
        return lambda: opt.apply([grad], [table])
    return make


def group_step(cls, **kwargs):
    return keras_optimizer_step(lambda: cls(learning_rate=1e-3, l1=1e-6, l21=1e-4, **kwargs))


def reference_step(cls):
    """The group optimizer forced onto tf_step.py (the XLA/no-library path)."""
    def make(table, grad):
        opt = cls(learning_rate=1e-3, l1=1e-6, l21=1e-4)
        opt.build([table])

        def step():
            with reference_path():
                opt.apply([grad], [table])
        return step
    return make


def tf_raw_ftrl(table, grad):
    shape = table.shape
    acc = tf.Variable(tf.fill(shape, 0.1))
    lin = tf.Variable(tf.zeros(shape))
    return lambda: tf.raw_ops.ResourceSparseApplyFtrl(
        var=table.value.handle, accum=acc.handle, linear=lin.handle, grad=grad.values,
        indices=grad.indices, lr=1e-3, l1=1e-6, l2=0.0, lr_power=-0.5)


def tf_raw_adagrad(table, grad):
    acc = tf.Variable(tf.fill(table.shape, 0.1))
    return lambda: tf.raw_ops.ResourceSparseApplyAdagradV2(
        var=table.value.handle, accum=acc.handle, lr=1e-3, epsilon=1e-7, grad=grad.values,
        indices=grad.indices)


METHODS = {
    "group_adam": group_step(gl.GroupAdam),
    "group_amsgrad": group_step(gl.GroupAMSGrad),
    "group_adagrad": group_step(gl.GroupAdagrad),
    "group_momentum": group_step(gl.GroupMomentum, momentum=0.9),
    "group_ftrl": group_step(gl.GroupFtrl),
    "group_rmsprop": group_step(gl.GroupRMSprop, momentum=0.9, centered=True),
    "tf_sparse_ftrl": tf_raw_ftrl,
    "tf_sparse_adagrad": tf_raw_adagrad,
    "group_adam_reference": reference_step(gl.GroupAdam),
    "keras_adam": keras_optimizer_step(lambda: keras.optimizers.Adam(learning_rate=1e-3)),
    "keras_ftrl": keras_optimizer_step(lambda: keras.optimizers.Ftrl(learning_rate=1e-3)),
}


def time_method(make, rows, dim, ids, values, steps):
    table = keras.Variable(np.full((rows, dim), 0.01, np.float32))
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(ids), tf.constant([rows, dim], tf.int64))
    update = make(table, grad)

    @tf.function
    def step():
        update()

    return median_seconds(step, steps)


def copy_bandwidth(megabytes=512, repeats=5):
    """Bytes per second of a large NumPy copy (read + write counted)."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times)


def step_bytes(distinct_rows, n_ids, dim, num_slots=3, itemsize=4):
    """Bytes a fused sparse step must move: touched rows of var + slots read and
    written once, gradient rows and ids read once."""
    return distinct_rows * dim * itemsize * (1 + num_slots) * 2 + n_ids * (dim * itemsize + 8)


def grid(args):
    rng = np.random.default_rng(0)
    rows_list = [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    dims = [8] if args.quick else [8, 16, 64]
    ids_list = [4096] if args.quick else [4096, 65536]
    steps = 5 if args.quick else args.steps
    bandwidth = copy_bandwidth(64 if args.quick else 512)
    print(f"copy bandwidth (NumPy, read+write): {bandwidth / 1e9:.2f} GB/s")
    header = (f"{'rows':>10}{'dim':>5}{'ids':>7}{'distinct':>9}  {'group_adam ms':>13}"
              f"{'group_ftrl':>11}{'tf_ftrl':>9}{'tf_adagrad':>11}{'reference':>10}"
              f"{'keras_adam':>11}  {'GB/s':>6}{'of copy':>8}")
    print(header)
    results = []
    for rows in rows_list:
        for dim in dims:
            if rows * dim > 10_000_000 * 16:
                continue  # 10^7 x 64: var + 3 slots alone take 10 GB, as much again to set up
            for n in ids_list:
                ids = zipf_ids(rng, rows, n)
                values = rng.normal(size=(n, dim)).astype(np.float32)
                names = ["group_adam", "group_ftrl", "tf_sparse_ftrl", "tf_sparse_adagrad",
                         "group_adam_reference"]
                if rows * dim <= 10_000_000 * 8:
                    names.append("keras_adam")
                t = {m: time_method(METHODS[m], rows, dim, ids, values, steps) for m in names}
                distinct = np.unique(ids).size
                gbs = step_bytes(distinct, n, dim) / t["group_adam"]
                ratio = lambda m: f"{t[m] / t['group_adam']:.2f}x" if m in t else "-"  # noqa: E731
                print(f"{rows:>10}{dim:>5}{n:>7}{distinct:>9}  {t['group_adam'] * 1e3:>13.3f}"
                      f"{ratio('group_ftrl'):>11}{ratio('tf_sparse_ftrl'):>9}"
                      f"{ratio('tf_sparse_adagrad'):>11}{ratio('group_adam_reference'):>10}"
                      f"{ratio('keras_adam'):>11}  {gbs / 1e9:>6.2f}{gbs / bandwidth:>8.1%}",
                      flush=True)
                results.append(dict(rows=rows, dim=dim, ids=n, distinct=distinct, **t))
    if args.quick:
        for r in results:
            assert all(np.isfinite(v) and v > 0 for k, v in r.items() if isinstance(v, float)), r
        print("quick run: outputs sane")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--ids", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--methods", default="group_adam,keras_adam,tf_sparse_ftrl,group_ftrl")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.grid or args.quick:
        return grid(args)
    rng = np.random.default_rng(0)
    ids = zipf_ids(rng, args.rows, args.ids)
    values = rng.normal(size=(args.ids, args.dim)).astype(np.float32)
    methods = args.methods.split(",")
    print(f"table {args.rows} x {args.dim} float32, {args.ids} ids per step "
          f"({np.unique(ids).size} distinct), fused ops: {gl.fused_available()}")
    results = {}
    for name in methods:
        results[name] = time_method(METHODS[name], args.rows, args.dim, ids, values, args.steps)
    first = results[methods[0]]
    print(f"{'method':<24}{'ms/step':>10}{'ratio to ' + methods[0]:>24}")
    for name in methods:
        print(f"{name:<24}{results[name] * 1e3:>10.3f}{results[name] / first:>24.2f}")
    return results


if __name__ == "__main__":
    main()
