"""Time of one sparse (embedding) update step, methods side by side in one run.

    python bench/sparse_update.py [--rows 1000000] [--dim 32] [--ids 4096]
                                  [--steps 30] [--methods a,b,...]

Every method updates the same [rows, dim] float32 table from the same
tf.IndexedSlices gradient (ids drawn from a Zipf law, duplicates included),
inside a tf.function, on TensorFlow's default thread settings. The table
prints the median time per step and its ratio to the first method, so that
comparisons hold on a shared, noisy machine.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import group_lasso_tf as gl  # noqa: E402
from group_lasso_tf.optimizers import base as gl_base  # noqa: E402


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
    """The group optimizer forced onto reference.py (the XLA/no-library path)."""
    def make(table, grad):
        opt = cls(learning_rate=1e-3, l1=1e-6, l21=1e-4)
        opt.build([table])
        original = gl_base._ops.fused_ops
        def step():
            gl_base._ops.fused_ops = lambda: None
            try:
                opt.apply([grad], [table])
            finally:
                gl_base._ops.fused_ops = original
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
    "tf_sparse_ftrl": tf_raw_ftrl,
    "tf_sparse_adagrad": tf_raw_adagrad,
    "group_adam_reference": reference_step(gl.GroupAdam),
    "keras_adam": keras_optimizer_step(lambda: keras.optimizers.Adam(learning_rate=1e-3)),
    "keras_ftrl": keras_optimizer_step(lambda: keras.optimizers.Ftrl(learning_rate=1e-3)),
}


def time_method(make, rows, dim, ids, values, steps):
    table = keras.Variable(np.zeros((rows, dim), np.float32) + 0.01)
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(ids), tf.constant([rows, dim], tf.int64))
    update = make(table, grad)

    @tf.function
    def step():
        update()
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()  # a tf.function call on the CPU returns when its ops have run
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--ids", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--methods", default="group_adam,keras_adam,tf_sparse_ftrl,group_ftrl")
    args = parser.parse_args(argv)
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
