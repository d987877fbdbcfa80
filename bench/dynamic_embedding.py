"""A lookup + GroupAdam step on a DynamicEmbedding vs a fixed Embedding
holding the same live rows, side by side in one run.

    python bench/dynamic_embedding.py [--rows 1000000] [--dim 16] [--rounds 7] [--quick]

Both tables hold `rows` ids (hashed 64-bit values for the dynamic one, their
dense numbers 0..rows-1 for the fixed one, all admitted before timing) and
take, per step, a batch of Zipf-distributed ids (4,096 and 65,536): the
lookup, a loss, its gradient (a tf.IndexedSlices over the batch's rows) and
GroupAdam's fused sparse update (for the dynamic table also the clearing of
evicted rows' slots and the release of rows left zero), in one tf.function
that returns the loss.
Interleaved rounds, median per-round time; the ratio is dynamic / fixed.
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


def make_step(layer, ids):
    opt = gl.GroupAdam(learning_rate=1e-3, l1=1e-6, l21=1e-6)
    weight = tf.constant(np.linspace(-1, 1, layer.output_dim), tf.float32)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            # Not linear in the rows: as in a real model, the gradient needs
            # the looked-up values, so the update waits for the lookup (with a
            # linear loss it could overlap the fixed table's dense read and
            # copy the whole table on write).
            loss = tf.reduce_sum(tf.square(layer(batch)) * weight)
        grads = tape.gradient(loss, [layer.embeddings])
        opt.apply(grads, [layer.embeddings])
        return loss

    step(ids)  # trace, build the optimizer
    return step


def run(rows, dim, batch, rounds, steps, rng):
    keys = rng.integers(-2**63, 2**63 - 1, size=rows, dtype=np.int64)
    dynamic = gl.layers.DynamicEmbedding(dim, capacity=rows)
    fixed = keras.layers.Embedding(rows, dim)
    # Admit every key (in chunks), so both tables hold `rows` live rows.
    for start in range(0, rows, 65536):
        dynamic(tf.constant(keys[start:start + 65536]))
    fixed.build((None,))
    batches = [zipf_ids(rng, rows, batch) for _ in range(steps)]
    dyn_batches = [tf.constant(keys[b]) for b in batches]
    fix_batches = [tf.constant(b) for b in batches]
    steps_by_name = {"fixed": (make_step(fixed, fix_batches[0]), fix_batches),
                     "dynamic": (make_step(dynamic, dyn_batches[0]), dyn_batches)}
    times = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, (step, inputs) in steps_by_name.items():
            start = time.perf_counter()
            for b in inputs:
                step(b)
            times[name].append((time.perf_counter() - start) / len(inputs) * 1e3)
    per_round = np.array(times["dynamic"]) / np.array(times["fixed"])
    return (float(np.median(times["fixed"])), float(np.median(times["dynamic"])),
            float(np.median(per_round)), dynamic.table_stats()["live"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.steps = 20_000, 2, 3
    rng = np.random.default_rng(0)
    print(f"{args.rows} live rows x {args.dim} float32, GroupAdam, median of {args.rounds} "
          f"interleaved rounds of {args.steps} steps")
    print(f"{'ids/step':>9}{'fixed ms':>10}{'dynamic ms':>12}{'ratio':>8}{'live':>10}")
    results = []
    for batch in (4096, 65536):
        fixed_ms, dynamic_ms, ratio, live = run(args.rows, args.dim, batch, args.rounds,
                                                 args.steps, rng)
        results.append((batch, fixed_ms, dynamic_ms, ratio, live))
        print(f"{batch:>9}{fixed_ms:>10.3f}{dynamic_ms:>12.3f}{ratio:>8.2f}{live:>10}")
    if args.quick:
        assert all(np.isfinite(r[1]) and r[1] > 0 and r[2] > 0 and r[4] == args.rows
                   for r in results), results
        print("quick run: outputs sane")
    return results


if __name__ == "__main__":
    main()
