"""The group optimizers on tf_keras (Keras 2): both of its optimizer bases.

`group_lasso_tf.tf_keras` (on `tf_keras.optimizers.Optimizer`) and
`group_lasso_tf.tf_keras.legacy` (on OptimizerV2) against the float64 NumPy
reference of docs/algorithm.md (fresh random strengths and gradients every run,
duplicate ids, an empty batch), against tf_keras's own optimizers at zero
strengths, and in `model.fit` with `TF_USE_LEGACY_KERAS=1` (tf.keras is
tf_keras there) on one device and under MirroredStrategy, with save/load.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import group_lasso_tf as gl
import group_lasso_tf.tf_keras as gl_tfk
import np_reference as npr
from harness import rel_err

BASES = {"optimizer": gl_tfk, "legacy": gl_tfk.legacy}
RULES = {"adam": "GroupAdam", "amsgrad": "GroupAMSGrad", "adagrad": "GroupAdagrad",
         "momentum": "GroupMomentum", "ftrl": "GroupFtrl", "rmsprop": "GroupRMSprop"}
LR = 0.0625  # exactly representable: tf_keras keeps the learning rate in float32


def _hyper_kwargs(rule):
    """The rule's hyperparameters, and the group term on the dense-gradient
    variable too (the NumPy reference regularizes every variable)."""
    return dict(npr.BASE_HP[rule], regularize_dense=True)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_matches_numpy_reference(base, rule, rng):
    l1, l21, l2 = (float(v) for v in rng.uniform(0, [0.05, 0.2, 0.05]))
    hp = npr.BASE_HP[rule]
    opt = getattr(BASES[base], RULES[rule])(learning_rate=LR, l1=l1, l21=l21, l2=l2,
                                            **_hyper_kwargs(rule))
    dense0 = rng.normal(size=(6, 4))
    table0 = rng.normal(size=(9, 3))
    dense = tf.Variable(dense0)
    table = tf.Variable(table0)
    np_dense, np_table = dense0.copy(), table0.copy()
    s_dense, s_table = npr.initial_state(rule, dense0.shape, hp), npr.initial_state(
        rule, table0.shape, hp)
    for t in range(1, 8):
        g = rng.normal(size=dense0.shape) * (t % 3 + 0.5)
        n = 0 if t == 4 else int(rng.integers(1, 8))  # an empty batch at step 4
        ids = rng.integers(0, 5, size=n)  # ids from 5 values: duplicates
        gv = rng.normal(size=(n, 3))
        opt.apply_gradients([
            (tf.constant(g), dense),
            (tf.IndexedSlices(tf.constant(gv.reshape(n, 3)), tf.constant(ids, tf.int64),
                              tf.constant([9, 3], tf.int64)), table),
        ])
        np_dense, s_dense = npr.dense_step(rule, np_dense, s_dense, g, LR, l1, l21, l2, hp, t)
        np_table, s_table = npr.sparse_step(rule, np_table, s_table, gv, ids, LR, l1, l21, l2,
                                            hp, t)
    assert rel_err(dense.numpy(), np_dense) < 1e-10
    assert rel_err(table.numpy(), np_table) < 1e-10
    assert rel_err(opt.get_slot(table, "linear").numpy(), s_table["linear"]) < 1e-10
    assert np.array_equal(np.all(table.numpy() == 0, axis=1), np.all(np_table == 0, axis=1))
    assert int(opt.iterations.numpy()) == 7


def _counterparts(base):
    """(group class name, kwargs, tf_keras class, its kwargs) at zero strengths."""
    ns = tf_keras.optimizers if base == "optimizer" else tf_keras.optimizers.legacy
    adam = dict(beta_1=0.875, beta_2=0.9990234375, epsilon=2.0**-20)
    ftrl = dict(initial_accumulator_value=0.125, learning_rate_power=-0.5)
    rmsprop = dict(rho=0.875, momentum=0.875, epsilon=2.0**-20, centered=True)
    return {
        "adam": ("GroupAdam", adam, ns.Adam, adam),
        "amsgrad": ("GroupAMSGrad", adam, ns.Adam, dict(adam, amsgrad=True)),
        "adagrad": ("GroupAdagrad", dict(initial_accumulator_value=0.125, epsilon=2.0**-20),
                    ns.Adagrad, dict(initial_accumulator_value=0.125, epsilon=2.0**-20)),
        "momentum": ("GroupMomentum", dict(momentum=0.875), ns.SGD, dict(momentum=0.875)),
        "nesterov": ("GroupMomentum", dict(momentum=0.875, nesterov=True), ns.SGD,
                     dict(momentum=0.875, nesterov=True)),
        "ftrl": ("GroupFtrl", ftrl, ns.Ftrl, ftrl),
        "rmsprop": ("GroupRMSprop", rmsprop, ns.RMSprop, rmsprop),
    }


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("case", ["adam", "amsgrad", "adagrad", "momentum", "nesterov", "ftrl",
                                  "rmsprop"])
def test_zero_strengths_match_tf_keras(base, case, rng):
    """30 steps with a learning-rate schedule: the tf_keras optimizer, step for step."""
    name, kwargs, theirs_cls, their_kwargs = _counterparts(base)[case]
    schedule = lambda: tf_keras.optimizers.schedules.ExponentialDecay(2.0**-5, 10, 0.75)  # noqa
    ours = getattr(BASES[base], name)(learning_rate=schedule(), **kwargs)
    theirs = theirs_cls(learning_rate=schedule(), **their_kwargs)
    init = [rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    ours_vars = [tf.Variable(x) for x in init]
    their_vars = [tf.Variable(x) for x in init]
    for _ in range(30):
        grads = [tf.constant(rng.normal(size=x.shape).astype(np.float32)) for x in init]
        ours.apply_gradients(zip(grads, ours_vars))
        theirs.apply_gradients(zip(grads, their_vars))
    for a, b in zip(ours_vars, their_vars):
        assert rel_err(a.numpy(), b.numpy()) < 2e-5


@pytest.mark.parametrize("base", sorted(BASES))
def test_check_numerics_writes_nothing(base):
    opt = BASES[base].GroupAdam(learning_rate=0.1, l21=0.01, check_numerics=True)
    var = tf.Variable(np.ones((3, 2), np.float32))
    table = tf.Variable(np.ones((4, 2), np.float32))
    opt.apply_gradients([(tf.ones((3, 2)), var),
                         (tf.IndexedSlices(tf.ones((1, 2)), tf.constant([1]), tf.constant([4, 2])),
                          table)])
    before = [var.numpy(), table.numpy(), opt.get_slot(var, "linear").numpy(),
              int(opt.iterations.numpy())]
    bad = tf.IndexedSlices(tf.constant([[np.nan, 1.0]]), tf.constant([2]), tf.constant([4, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="check_numerics.*has NaN or Inf"):
        opt.apply_gradients([(tf.ones((3, 2)), var), (bad, table)])
    after = [var.numpy(), table.numpy(), opt.get_slot(var, "linear").numpy(),
             int(opt.iterations.numpy())]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_config_round_trip(base, rule):
    cls = getattr(BASES[base], RULES[rule])
    opt = cls(learning_rate=0.25, l1=0.5, l21=0.125, l2=0.0625, lazy=False,
              unregularized=["bias"], check_numerics=True)
    config = opt.get_config()
    again = cls.from_config(config)
    assert again.get_config() == config
    assert type(again) is cls and again._rule.name == rule
    assert config["l21"] == 0.125 and config["lazy"] is False
    assert tf_keras.saving.get_registered_object(
        tf_keras.saving.get_registered_name(cls)) is cls


@pytest.mark.parametrize("base", sorted(BASES))
def test_bad_arguments_name_themselves(base):
    ns = BASES[base]
    with pytest.raises(ValueError, match="`l21`"):
        ns.GroupAdam(l21=-1.0)
    with pytest.raises(ValueError, match="`learning_rate_power`"):
        ns.GroupFtrl(learning_rate_power=0.5)
    with pytest.raises(ValueError, match="`initial_accumulator_value`"):
        ns.GroupAdagrad(initial_accumulator_value=-0.1)
    with pytest.raises(TypeError, match="float32 and float64"):
        ns.GroupAdam().apply_gradients([(tf.ones((2, 2), tf.float16),
                                         tf.Variable(tf.ones((2, 2), tf.float16)))])


WORKER = os.path.join(os.path.dirname(__file__), "workers", "tf_keras_fit.py")


@pytest.fixture(scope="module")
def fit_results(tmp_path_factory):
    """Runs the fit worker once with TF_USE_LEGACY_KERAS=1 (a fresh process:
    tf.keras is chosen at TensorFlow's import)."""
    out = tmp_path_factory.mktemp("tf_keras_fit")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(gl.__file__)), os.path.dirname(__file__)])
    proc = subprocess.run([sys.executable, WORKER, str(out)], env=env, cwd="/",
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("case", ["optimizer-GroupAdam", "legacy-GroupFtrl"])
def test_fit_with_legacy_keras(fit_results, case):
    r = fit_results[case]
    assert r["tf_keras_is_tf_keras"]
    assert r["loss_last"] < r["loss_first"], r
    assert 0.2 < r["zero_row_fraction"] < 0.9, r
    # The group lasso removes rows of ids without signal first.
    assert r["signal_rows_zero"] < 0.5 * r["noise_rows_zero"], r
    # The saved model (.keras for the new base, .h5 for the legacy one, as
    # tf_keras restores its own optimizers) loads with its optimizer, and the
    # next step of the loaded copy equals the original's.
    assert r["loaded_class"] == r["class"]
    assert r["next_step_max_abs_diff"] == 0.0, r
    # MirroredStrategy (2 logical CPUs, the batch split between them) trains
    # to the one-device weights.
    assert r["mirrored_rel_err"] < 1e-4, r
    assert r["mirrored_same_zero_rows"], r


@pytest.mark.parametrize("base", sorted(BASES))
def test_strengths_change_between_steps(base, rng):
    """Issue 9 on tf_keras: a callable of the step for l1, per_variable for the
    table, set_strength of l21 before each step; vs the NumPy reference."""
    rule, hp = "adam", npr.BASE_HP["adam"]
    ramp = float(rng.uniform(0.001, 0.01))
    table_l2 = float(rng.uniform(0.01, 0.05))
    opt = getattr(BASES[base], "GroupAdam")(
        learning_rate=LR, l1=lambda step: ramp * tf.cast(step, tf.float64), l21=0.1,
        per_variable=[("table", {"l2": table_l2})], **_hyper_kwargs(rule))
    dense0, table0 = rng.normal(size=(6, 4)), rng.normal(size=(9, 3))
    dense, table = tf.Variable(dense0, name="dense"), tf.Variable(table0, name="table")
    np_dense, np_table = dense0.copy(), table0.copy()
    s_dense, s_table = (npr.initial_state(rule, dense0.shape, hp),
                        npr.initial_state(rule, table0.shape, hp))
    for t in range(1, 7):
        l21 = float(rng.uniform(0, 0.3))
        if t > 1:
            opt.set_strength("l21", l21)
        else:
            l21 = 0.1
        g = rng.normal(size=dense0.shape)
        ids = rng.integers(0, 5, size=5)
        gv = rng.normal(size=(5, 3))
        opt.apply_gradients([(tf.constant(g), dense), (tf.IndexedSlices(
            tf.constant(gv), tf.constant(ids, tf.int64), tf.constant([9, 3], tf.int64)), table)])
        l1 = ramp * (t - 1)
        np_dense, s_dense = npr.dense_step(rule, np_dense, s_dense, g, LR, l1, l21, 0.0, hp, t)
        np_table, s_table = npr.sparse_step(rule, np_table, s_table, gv, ids, LR, l1, l21,
                                            table_l2, hp, t)
    assert rel_err(dense.numpy(), np_dense) < 1e-10
    assert rel_err(table.numpy(), np_table) < 1e-10
    assert opt.get_strength(table, "l2") == table_l2
