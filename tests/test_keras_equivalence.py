"""With l1 = l21 = l2 = 0 every optimizer is its Keras counterpart, step for step.

100 steps with a learning-rate schedule from random initial weights, on a
rank-2 variable (regularized path), a rank-1 variable (plain path) and an
embedding-like variable fed tf.IndexedSlices (lazy=False, and lazy=True with
every row present; distinct ids, see below). Hyperparameters are exactly representable in float32,
because Keras rounds Python floats through float32 (docs/algorithm.md), so float64
runs can be compared tightly.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from harness import rel_err

CASES = {
    "adam": (gl.GroupAdam, keras.optimizers.Adam,
             dict(beta_1=0.875, beta_2=0.9990234375, epsilon=2.0**-20)),
    "amsgrad": (gl.GroupAMSGrad, keras.optimizers.Adam,
                dict(beta_1=0.875, beta_2=0.9990234375, epsilon=2.0**-20)),
    "adagrad": (gl.GroupAdagrad, keras.optimizers.Adagrad,
                dict(initial_accumulator_value=0.125, epsilon=2.0**-20)),
    "momentum": (gl.GroupMomentum, keras.optimizers.SGD, dict(momentum=0.875)),
    "nesterov": (gl.GroupMomentum, keras.optimizers.SGD, dict(momentum=0.875, nesterov=True)),
    "ftrl": (gl.GroupFtrl, keras.optimizers.Ftrl,
             dict(initial_accumulator_value=0.125, learning_rate_power=-0.5)),
    "ftrl_shrinkage": (gl.GroupFtrl, keras.optimizers.Ftrl,
                       dict(initial_accumulator_value=0.125, learning_rate_power=-0.5,
                            l2_shrinkage=0.0625, beta=0.5)),
    # Keras's own example values (0.9 is not exact in float32: Keras's RMSprop
    # multiplies its variables by the Python floats, which TensorFlow converts
    # straight to float64).
    "rmsprop": (gl.GroupRMSprop, keras.optimizers.RMSprop, dict(rho=0.9, epsilon=2.0**-20)),
    "rmsprop_momentum": (gl.GroupRMSprop, keras.optimizers.RMSprop,
                         dict(rho=0.9, momentum=0.9, epsilon=2.0**-20)),
    "rmsprop_centered": (gl.GroupRMSprop, keras.optimizers.RMSprop,
                         dict(rho=0.9, epsilon=2.0**-20, centered=True)),
    "rmsprop_centered_momentum": (gl.GroupRMSprop, keras.optimizers.RMSprop,
                                  dict(rho=0.9, momentum=0.9, epsilon=2.0**-20, centered=True)),
}
TOLERANCE = {"float32": 1e-5, "float64": 1e-6}


def make_pair(name):
    ours_cls, keras_cls, kwargs = CASES[name]
    schedule = lambda: keras.optimizers.schedules.ExponentialDecay(2.0**-5, 10, 0.75)  # noqa: E731
    keras_kwargs = dict(kwargs)
    if name == "amsgrad":
        keras_kwargs["amsgrad"] = True
    if name == "ftrl_shrinkage":
        keras_kwargs = dict(initial_accumulator_value=0.125, learning_rate_power=-0.5,
                            l2_shrinkage_regularization_strength=0.0625, beta=0.5)
    return ours_cls(learning_rate=schedule(), **kwargs), keras_cls(learning_rate=schedule(), **keras_kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["rank2", "rank1", "sparse_dense", "sparse_lazy_all_rows"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_keras_for_100_steps(name, variant, dtype, rng):
    ours_opt, keras_opt = make_pair(name)
    if variant.startswith("sparse"):
        ours_opt.lazy = variant == "sparse_lazy_all_rows"
    shape = (7,) if variant == "rank1" else (12, 4)
    w0 = rng.normal(size=shape)
    ours, theirs = keras.Variable(w0, dtype=dtype), keras.Variable(w0, dtype=dtype)
    for _ in range(100):
        if variant.startswith("sparse"):
            # Distinct ids: Keras's Adagrad and Ftrl square the values of an
            # IndexedSlices before merging duplicates (sum of squares, not the
            # square of the summed row gradient), which is not the paper's math.
            n = shape[0] if variant == "sparse_lazy_all_rows" else int(rng.integers(1, shape[0]))
            ids = rng.choice(shape[0], size=n, replace=False)
            values = tf.constant(rng.normal(size=(n, shape[1])), dtype)
            grad = tf.IndexedSlices(values, tf.constant(ids, tf.int64), tf.constant(shape, tf.int64))
        else:
            grad = tf.constant(rng.normal(size=shape), dtype)
        ours_opt.apply([grad], [ours])
        keras_opt.apply([grad], [theirs])
    assert np.max(np.abs(theirs.numpy() - w0)) > 1e-2  # it trained
    assert rel_err(ours.numpy(), theirs.numpy()) <= TOLERANCE[dtype]


@pytest.mark.parametrize("name", ["adam", "ftrl"])
def test_lazy_sparse_leaves_other_rows_and_moments_alone(name, rng):
    """lazy=True: rows not named keep weights and slots; lazy=False decays them."""
    ours_cls, _, kwargs = CASES[name]
    w0 = rng.normal(size=(6, 3)).astype("float32")
    grad0 = tf.IndexedSlices(tf.ones([6, 3]), tf.range(6), tf.constant([6, 3]))
    grad1 = tf.IndexedSlices(tf.ones([1, 3]), tf.constant([2]), tf.constant([6, 3]))
    results = {}
    for lazy in (True, False):
        opt = ours_cls(learning_rate=0.1, lazy=lazy, **kwargs)
        v = keras.Variable(w0)
        opt.apply([grad0], [v])
        after_first = v.numpy().copy()
        slots = [opt.get_slot(v, n) for n in opt._group_slot_names]
        slots_first = [s.numpy().copy() for s in slots]
        opt.apply([grad1], [v])
        results[lazy] = (after_first, v.numpy(), slots_first, [s.numpy() for s in slots])
    first, second, slots_first, slots_second = results[True]
    others = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(second[others], first[others])
    for a, b in zip(slots_first, slots_second):
        np.testing.assert_array_equal(b[others], a[others])
    assert not np.array_equal(second[2], first[2])
    if name == "adam":  # Adam's momentum keeps moving untouched rows when not lazy
        first, second, _, _ = results[False]
        assert not np.array_equal(second[others], first[others])
