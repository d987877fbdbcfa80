"""Where the time of one large sparse step goes (the bandwidth analysis of docs/benchmarks.md).

    python bench/profile_sparse_step.py [--rows 1000000] [--dim 16] [--ids 65536]

Times, on the same Zipf ids: the raw fused Group Adam op (no Keras), the same
op on an empty batch (call overhead), the op run 200 times in one
`tf.while_loop` (no call overhead; its bytes moved per second against the
NumPy copy bandwidth), the C++ step run serially by the pybind11 module, and
that serial step on the distinct ids with their summed gradients (no
duplicates to group).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_seconds  # noqa: E402
from sparse_update import copy_bandwidth, step_bytes, zipf_ids  # noqa: E402

from group_lasso_tf import _core  # noqa: E402
from group_lasso_tf.ops import fused_ops  # noqa: E402

HYPER = [0.9, 0.999, 0.9, 0.999, 1e-7]
LOOP_STEPS = 200


def median_ms(fn, repeats=20):
    return median_seconds(fn, repeats, warmup=1) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--ids", type=int, default=65536)
    args = parser.parse_args(argv)
    ops = fused_ops()
    rng = np.random.default_rng(0)
    ids = zipf_ids(rng, args.rows, args.ids)
    values = rng.normal(size=(args.ids, args.dim)).astype(np.float32)
    var = tf.Variable(tf.fill([args.rows, args.dim], 0.01))
    slots = [tf.Variable(tf.zeros([args.rows, args.dim])) for _ in range(3)]
    grad, indices = tf.constant(values), tf.constant(ids)

    def op(g, i):
        ops.resource_sparse_apply_group_adam(var.handle, *[s.handle for s in slots], 1e-3, 1e-6,
                                             1e-4, 0.0, *HYPER, g, i)

    def loop_body(i):
        op(grad, indices)
        return i + 1

    full = tf.function(lambda: op(grad, indices) and None)
    empty = tf.function(lambda: op(grad[:0], indices[:0]) and None)
    looped = tf.function(lambda: tf.while_loop(lambda i: i < LOOP_STEPS, loop_body,
                                               [tf.constant(0)]) and None)
    host_var = np.full((args.rows, args.dim), 0.01, np.float32)
    host_slots = [np.zeros((args.rows, args.dim), np.float32) for _ in range(3)]
    distinct, inverse = np.unique(ids, return_inverse=True)
    summed = np.zeros((distinct.size, args.dim), np.float32)
    np.add.at(summed, inverse, values)
    print(f"table {args.rows} x {args.dim}, {args.ids} ids ({distinct.size} distinct)")
    print(f"raw fused op: {median_ms(full):.3f} ms")
    print(f"same op, empty batch (call overhead): {median_ms(empty):.3f} ms")
    per_step = median_seconds(looped, 5, warmup=1) / LOOP_STEPS
    moved = step_bytes(distinct.size, args.ids, args.dim) / per_step
    bandwidth = copy_bandwidth()
    print(f"same op, {LOOP_STEPS} steps in one tf.while_loop: {per_step * 1e3:.3f} ms per step, "
          f"{moved / 1e9:.2f} GB/s, {moved / bandwidth:.1%} of the copy bandwidth "
          f"({bandwidth / 1e9:.2f} GB/s)")
    print("serial C++ step (pybind11): %.3f ms" % median_ms(lambda: _core.apply_sparse(
        "adam", host_var, host_slots, values, ids, 1e-3, 1e-6, 1e-4, 0.0, HYPER)))
    print("serial C++ step on the distinct ids, duplicates summed beforehand: %.3f ms" % median_ms(
        lambda: _core.apply_sparse("adam", host_var, host_slots, summed, distinct, 1e-3, 1e-6,
                                   1e-4, 0.0, HYPER)))


if __name__ == "__main__":
    main()
