"""Time of one dense update of a Dense kernel, methods side by side in one run.

    python bench/dense_update.py [--shapes 1024x1024,4096x1024] [--steps 50] [--quick]

Methods: the fused Group Adam dense op (l1=1e-6, l21=1e-4), TensorFlow's own
fused `ResourceApplyAdam` (tf.raw_ops, no regularization), Keras 3's `Adam`,
and Group Adam on its pure-TensorFlow reference path. Median time per step
inside a tf.function, and its ratio to ResourceApplyAdam.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_seconds, reference_path  # noqa: E402

import group_lasso_tf as gl  # noqa: E402


def optimizer_step(factory, force_reference=False):
    def make(var, grad):
        opt = factory()
        opt.build([var])

        def step():
            if not force_reference:
                opt.apply([grad], [var])
                return
            with reference_path():
                opt.apply([grad], [var])
        return step
    return make


def raw_adam(var, grad):
    m = tf.Variable(tf.zeros(var.shape))
    v = tf.Variable(tf.zeros(var.shape))
    return lambda: tf.raw_ops.ResourceApplyAdam(
        var=var.value.handle, m=m.handle, v=v.handle, beta1_power=0.9, beta2_power=0.999,
        lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-7, grad=grad)


METHODS = {
    "tf_apply_adam": raw_adam,
    "group_adam": optimizer_step(lambda: gl.GroupAdam(l1=1e-6, l21=1e-4)),
    "keras_adam": optimizer_step(lambda: keras.optimizers.Adam()),
    "group_adam_reference": optimizer_step(lambda: gl.GroupAdam(l1=1e-6, l21=1e-4), True),
}


def time_method(make, shape, grad_value, steps):
    var = keras.Variable(np.full(shape, 0.01, np.float32))
    update = make(var, tf.constant(grad_value))

    @tf.function
    def step():
        update()

    return median_seconds(step, steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024x1024,4096x1024")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.steps = "256x256", 5
    print(f"{'shape':<12}" + "".join(f"{m:>22}" for m in METHODS) + "   (ms/step, ratio to tf_apply_adam)")
    results = {}
    for text in args.shapes.split(","):
        shape = tuple(int(x) for x in text.split("x"))
        grad = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        t = {m: time_method(f, shape, grad, args.steps) for m, f in METHODS.items()}
        results[text] = t
        base = t["tf_apply_adam"]
        print(f"{text:<12}" + "".join(f"{t[m] * 1e3:>12.3f} ({t[m] / base:5.2f}x)" for m in METHODS),
              flush=True)
    if args.quick:
        assert all(v > 0 and np.isfinite(v) for t in results.values() for v in t.values())
        print("quick run: outputs sane")
    return results


if __name__ == "__main__":
    main()
