"""A multi-table step where one table has most of the ids: the multi-table op
against one op per table, side by side.

    python bench/skewed_tables.py [--rows 1000000] [--ids 65536] [--small 25]
                                  [--rounds 9] [--steps 10] [--quick]

One large table (`--rows` x 16, `--ids` Zipf ids per step: a multi-hot field)
and `--small` tables of 100,000 x 16 with 1,024 ids each (one-hot fields),
updated by GroupAdam through Keras's `apply`, one `tf.function` call per
step. `multi-table op`: the sparse steps of all tables in one op (the
default), which sums each table's duplicates whole, on one thread; `one op
per table`: one sparse op per table, where the large batch is split by id
hash between the intra-op threads (ApplySparseIds in cc/group_lasso/apply.h).
Interleaved rounds of `--steps` steps, median of the per-round times, and
the median of the per-round ratios.
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
from sparse_update import zipf_ids  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

DIM, SMALL_ROWS, SMALL_IDS = 16, 100_000, 1024


def make_step(sizes, multi_table, rng):
    """A compiled step over fresh variables of `sizes` rows, and its optimizer."""
    variables = [keras.Variable(rng.normal(size=(rows, DIM)).astype(np.float32) * 0.01)
                 for rows in sizes]
    optimizer = gl.GroupAdam(learning_rate=1e-3, l1=1e-6, l21=1e-4)
    optimizer._multi_table_steps = multi_table
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply([tf.IndexedSlices(v, i, tf.constant([rows, DIM], tf.int64))
                         for (v, i), rows in zip(grads, sizes)], variables)

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ids", type=int, default=65536)
    parser.add_argument("--small", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.ids, args.small, args.rounds, args.steps = 100_000, 8192, 4, 2, 3
    rng = np.random.default_rng(0)
    sizes = [args.rows] + [SMALL_ROWS] * args.small
    counts = [args.ids] + [SMALL_IDS] * args.small
    batches = [[(tf.constant(rng.normal(size=(n, DIM)).astype(np.float32)),
                 tf.constant(zipf_ids(rng, rows, n)))
                for rows, n in zip(sizes, counts)] for _ in range(args.steps)]
    steps = {"multi-table op": make_step(sizes, True, rng),
             "one op per table": make_step(sizes, False, rng)}
    times = {name: [] for name in steps}
    for name, step in steps.items():  # trace and warm up
        step(batches[0])
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for grads in batches:
                step(grads)
            times[name].append((time.perf_counter() - start) / len(batches))
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    ratios = [a / b for a, b in zip(times["multi-table op"], times["one op per table"])]
    distinct = len(np.unique(batches[0][0][1].numpy()))
    print(f"GroupAdam, one table of {args.rows:,} x {DIM} with {args.ids:,} ids "
          f"({distinct:,} distinct) and {args.small} of {SMALL_ROWS:,} x {DIM} with "
          f"{SMALL_IDS:,} ids; {os.cpu_count()} cores; median of {args.rounds} interleaved "
          f"rounds of {args.steps} steps")
    for name, value in ms.items():
        print(f"  {name:<18}{value:8.3f} ms per step")
    print(f"  multi-table / one op per table: {float(np.median(ratios)):.2f}x (median of rounds)")
    if args.quick:
        assert all(v > 0 and np.isfinite(v) for v in ms.values()), ms
        print("quick run: outputs sane")
    return 0


if __name__ == "__main__":
    sys.exit(main())
