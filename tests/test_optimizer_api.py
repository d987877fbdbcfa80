"""The optimizers as Keras optimizers: features, config, saving, errors, regularization."""

import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from group_lasso_tf import ops as gl_ops
from harness import rel_err

ALL = [gl.GroupAdam, gl.GroupAMSGrad, gl.GroupAdagrad, gl.GroupMomentum, gl.GroupFtrl]
# GroupAdaHessian trains through group_lasso_tf.hessian (tests/test_adahessian.py);
# its arguments and config behave like the others'.
WITH_ADAHESSIAN = ALL + [gl.GroupAdaHessian]


# ------------------------------------------------------------ Keras features
FEATURES = {
    "clipnorm": dict(clipnorm=0.5),
    "global_clipnorm": dict(global_clipnorm=0.5),
    "clipvalue": dict(clipvalue=0.1),
    "weight_decay": dict(weight_decay=0.05),
    "use_ema": dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3),
    "gradient_accumulation": dict(gradient_accumulation_steps=3),
    "loss_scale_factor": dict(loss_scale_factor=8.0),
}


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adagrad", "nesterov", "ftrl"])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_keras_base_features_match_keras(feature, name, rng):
    """Each base-optimizer feature behaves as in the Keras counterpart, for
    every optimizer (zero strengths)."""
    from test_keras_equivalence import CASES

    ours_cls, keras_cls, rule_kwargs = CASES[name]
    kwargs = dict(FEATURES[feature], **rule_kwargs)
    ours = ours_cls(learning_rate=0.05, **kwargs)
    theirs = keras_cls(learning_rate=0.05, **kwargs, **({"amsgrad": True} if name == "amsgrad"
                                                        else {}))
    w0 = rng.normal(size=(5, 3)).astype("float32")
    b0 = rng.normal(size=(3,)).astype("float32")
    a = [keras.Variable(w0), keras.Variable(b0)]
    b = [keras.Variable(w0), keras.Variable(b0)]
    for _ in range(9):
        grads = [tf.constant(rng.normal(size=(5, 3)), tf.float32),
                 tf.constant(rng.normal(size=(3,)), tf.float32)]
        ours.apply(grads, a)
        theirs.apply(grads, b)
    for x, y, w in zip(a, b, (w0, b0)):
        assert not np.allclose(y.numpy(), w)
        assert rel_err(x.numpy(), y.numpy()) <= 1e-5


def test_learning_rate_schedule_is_not_retraced(rng):
    opt = gl.GroupAdam(learning_rate=keras.optimizers.schedules.PiecewiseConstantDecay(
        [2, 4], [0.1, 0.01, 0.001]), l21=1e-3)
    v = keras.Variable(rng.normal(size=(4, 3)).astype("float32"))
    opt.build([v])
    step = tf.function(lambda g: opt.apply([g], [v]))
    for _ in range(6):
        step(tf.constant(rng.normal(size=(4, 3)), tf.float32))
    assert step.experimental_get_tracing_count() == 1


# ----------------------------------------------------------- regularization
def test_planted_signal_survives_noise_rows_go_to_zero(rng):
    """Linear model on 10 inputs of which input 0 carries the signal: with l21
    large enough, the rows (input units) of the 9 noise inputs become exactly
    zero and the informative row survives."""
    n, k, out = 2048, 10, 2
    x = rng.normal(size=(n, k)).astype("float32")
    y = np.stack([2.0 * x[:, 0], -1.5 * x[:, 0]], axis=1).astype("float32")
    y += 0.1 * rng.normal(size=y.shape).astype("float32")
    model = keras.Sequential([keras.Input((k,)), keras.layers.Dense(out, use_bias=False)])
    model.compile(optimizer=gl.GroupAdam(learning_rate=0.05, l21=1.0, regularize_dense=True),
                  loss="mse")
    model.fit(x, y, batch_size=128, epochs=8, verbose=0, shuffle=False)
    kernel = model.layers[0].kernel.numpy()
    assert np.all(kernel[1:] == 0.0), kernel
    np.testing.assert_allclose(kernel[0], [2.0, -1.5], atol=0.25)


def test_rank1_and_excluded_variables_get_the_plain_update(rng):
    w0 = rng.normal(size=(6, 4)).astype("float32")
    b0 = rng.normal(size=(4,)).astype("float32")
    kernel, bias, other = keras.Variable(w0), keras.Variable(b0), keras.Variable(w0, name="skipme")
    hp = dict(beta_1=0.875, beta_2=0.9990234375, epsilon=2.0**-20)
    opt = gl.GroupAdam(learning_rate=0.125, l1=10.0, l21=10.0, unregularized=["skip"],
                       regularize_dense=True, **hp)
    plain = keras.optimizers.Adam(learning_rate=0.125, **hp)
    ref_b, ref_o = keras.Variable(b0), keras.Variable(w0)
    g = [tf.constant(rng.normal(size=s), tf.float32) for s in [(6, 4), (4,), (6, 4)]]
    opt.apply(g, [kernel, bias, other])
    plain.apply(g[1:], [ref_b, ref_o])
    assert np.all(kernel.numpy() == 0)  # huge strengths: everything regularized goes
    # float32: compare as everywhere else, relative to the largest element
    # (element-wise, an element near zero can differ by 1e-5 relative).
    assert rel_err(bias.numpy(), ref_b.numpy()) <= 1e-6
    assert rel_err(other.numpy(), ref_o.numpy()) <= 1e-6


def test_exclude_from_regularization_by_object_and_after_build(rng):
    w0 = rng.normal(size=(6, 4)).astype("float32")
    a, b = keras.Variable(w0), keras.Variable(w0)
    opt = gl.GroupFtrl(learning_rate=0.1, l21=100.0, regularize_dense=True)
    opt.exclude_from_regularization(var_list=[b])
    opt.apply([tf.ones_like(w0), tf.ones_like(w0)], [a, b])
    assert np.all(a.numpy() == 0) and np.all(b.numpy() != 0)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_regularization(var_names=["x"])


def test_regularize_vectors_groups_each_element():
    v = keras.Variable(np.array([1e-3, 5.0], "float32"))
    opt = gl.GroupAdam(learning_rate=0.1, l21=0.5, regularize_vectors=True)
    opt.apply([tf.constant([1e-3, 1.0])], [v])
    assert v.numpy()[0] == 0.0 and v.numpy()[1] != 0.0


# ------------------------------------------------------------ copy on write
@pytest.mark.parametrize("sparse", [False, True])
def test_read_before_update_does_not_change(sparse, rng):
    """A tensor read before the update keeps the old values (copy-on-write)."""
    w0 = rng.normal(size=(50, 8)).astype("float32")
    v = tf.Variable(w0)
    opt = gl.GroupAdam(learning_rate=0.5, l21=1e-3)
    kv = keras.Variable(w0)
    opt.build([kv])
    before = kv.value.read_value()  # holds the variable's buffer
    if sparse:
        grad = tf.IndexedSlices(tf.ones([3, 8]), tf.constant([1, 4, 1]), tf.constant([50, 8]))
    else:
        grad = tf.ones([50, 8])
    opt.apply([grad], [kv])
    np.testing.assert_array_equal(before.numpy(), w0)
    assert not np.array_equal(kv.numpy(), w0)
    del v


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("cls", WITH_ADAHESSIAN)
@pytest.mark.parametrize("arg", ["l1", "l21", "l2"])
def test_negative_or_bad_strengths_raise_naming_the_argument(cls, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        cls(**{arg: -1e-3})
    with pytest.raises(ValueError, match=f"`{arg}`"):
        cls(**{arg: float("nan")})
    with pytest.raises(TypeError, match=f"`{arg}`"):
        cls(**{arg: "0.1"})


def _sparse_setup(rng):
    w0 = rng.normal(size=(10, 4)).astype("float32")
    v = keras.Variable(w0)
    opt = gl.GroupAdam(learning_rate=0.1, l21=1e-3)
    opt.apply([tf.IndexedSlices(tf.ones([2, 4]), tf.constant([0, 1]), tf.constant([10, 4]))], [v])
    snapshot = [v.numpy().copy()] + [s.numpy().copy() for s in opt.variables]
    return v, opt, snapshot


def _unchanged(v, opt, snapshot):
    now = [v.numpy()] + [s.numpy() for s in opt.variables]
    return all(np.array_equal(a, b) for a, b in zip(now, snapshot))


@pytest.mark.parametrize("bad_id", [10, -1, 2**40])
def test_out_of_range_ids_raise_and_write_nothing(bad_id, rng):
    v, opt, snapshot = _sparse_setup(rng)
    ids = tf.constant([3, bad_id, 5], tf.int64)
    grad = tf.IndexedSlices(tf.ones([3, 4]), ids, tf.constant([10, 4], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[1\] = .* is not in \[0, 10\)"):
        opt.apply([grad], [v])
    assert _unchanged(v, opt, snapshot)


def test_wrong_gradient_shape_raises_and_writes_nothing(rng):
    v, opt, snapshot = _sparse_setup(rng)
    grad = tf.IndexedSlices(tf.ones([2, 5]), tf.constant([3, 4]), tf.constant([10, 5]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="grad"):
        opt.apply([grad], [v])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        opt.apply([tf.ones([9, 4])], [v])
    assert _unchanged(v, opt, snapshot)


def test_ops_reject_bad_hyperparameters_by_name_and_write_nothing():
    fused = gl_ops.fused_ops()
    v = tf.Variable(np.ones((3, 2), np.float32))
    slots = [tf.Variable(np.zeros((3, 2), np.float32)) for _ in range(2)]
    good = dict(lr=0.1, l1=0.0, l21=0.0, l2=0.0, l2_shrinkage=0.0, beta=0.0, lr_power=-0.5)
    for name, value in [("lr", -1.0), ("l1", -1.0), ("l21", float("nan")), ("l2", float("inf")),
                        ("beta", -1.0), ("lr_power", 0.5)]:
        args = dict(good, **{name: value})
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"^.*{name} must be"):
            fused.resource_apply_group_ftrl(v.handle, *[s.handle for s in slots], grad=tf.ones([3, 2]),
                                            **args)
        np.testing.assert_array_equal(v.numpy(), 1.0)
    # Wrong dtype: a float64 gradient for a float32 variable.
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError), match="dtype|type"):
        fused.resource_apply_group_ftrl(v.handle, *[s.handle for s in slots],
                                        grad=tf.ones([3, 2], tf.float64),
                                        **{k: tf.constant(x, tf.float64) for k, x in good.items()})
    np.testing.assert_array_equal(v.numpy(), 1.0)


def test_unsupported_variable_dtype_is_a_clear_error():
    v = keras.Variable(np.ones((3, 2)), dtype="float16")
    with pytest.raises(TypeError, match="float32 and float64"):
        gl.GroupAdam().build([v])


def test_non_resource_variable_is_a_clear_error():
    from group_lasso_tf.optimizers.base import resource_variable

    with pytest.raises(TypeError, match="resource variable"):
        resource_variable(tf.constant([1.0]), "variable")


def test_pybind_module_validates_inputs():
    from group_lasso_tf import _core

    var = np.ones((4, 2))
    slots = [np.zeros((4, 2)) for _ in range(3)]
    hyper = [0.9, 0.999, 0.9, 0.999, 1e-7]
    with pytest.raises(ValueError, match=r"indices\[0\] = 4"):
        _core.apply_sparse("adam", var, slots, np.ones((1, 2)), np.array([4]), 0.1, 0, 0, 0, hyper)
    with pytest.raises(ValueError, match="l21 must be"):
        _core.apply_dense("adam", var, slots, np.ones((4, 2)), 0.1, 0, -1, 0, hyper)
    with pytest.raises(TypeError, match="slots\\[0\\] must have dtype"):
        _core.apply_dense("adam", var, [s.astype(np.float32) for s in slots], np.ones((4, 2)),
                          0.1, 0, 0, 0, hyper)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.apply_dense("adam", np.ones((2, 4)).T, slots, np.ones((4, 2)), 0.1, 0, 0, 0, hyper)
    np.testing.assert_array_equal(var, 1.0)


# ------------------------------------------------------- config and saving
@pytest.mark.parametrize("cls", WITH_ADAHESSIAN)
def test_get_config_from_config_round_trip(cls):
    opt = cls(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5),
              l1=1e-5, l21=2e-4, l2=3e-3, lazy=False, unregularized=["bias"], clipnorm=1.0)
    config = opt.get_config()
    clone = cls.from_config(config)
    assert keras.optimizers.serialize(clone) == keras.optimizers.serialize(opt)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is cls
    assert keras.optimizers.serialize(restored) == keras.optimizers.serialize(opt)


def _tiny_ctr_model(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((3,), dtype="int32")
    emb = keras.layers.Embedding(50, 4)(ids)
    h = keras.layers.Flatten()(emb)
    h = keras.layers.Dense(8, activation="relu")(h)
    out = keras.layers.Dense(1, activation="sigmoid")(h)
    return keras.Model(ids, out)


def _ctr_data(rng, n=256):
    x = rng.integers(0, 50, size=(n, 3)).astype("int32")
    y = (x[:, 0] % 3 == 0).astype("float32")
    return x, y


@pytest.mark.parametrize("cls", ALL)
def test_save_load_resumes_with_identical_next_step(cls, tmp_path, rng):
    x, y = _ctr_data(rng)
    model = _tiny_ctr_model()
    model.compile(optimizer=cls(learning_rate=0.05, l1=1e-4, l21=1e-3), loss="binary_crossentropy")
    model.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=False)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is cls
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    xb, yb = x[:64], y[:64]
    model.train_on_batch(xb, yb)
    loaded.train_on_batch(xb, yb)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# -------------------------------------------------------- execution modes
@pytest.mark.parametrize("cls", [gl.GroupAdam, gl.GroupFtrl])
def test_fit_eager_graph_and_xla_agree(cls, rng):
    """run_eagerly, tf.function and jit_compile=True (tf_step.py inside XLA).

    Zero rows by construction, whatever the draw: a fourth id column, with
    ids of its own (45-49), is looked up but dropped by the model, so those
    ids get gradients of exactly zero; their linear slots stay zero and the
    proximal step makes their rows zero at their first update
    (docs/algorithm.md). Whether the strength also zeroes trained rows
    depends on the draw; the zero pattern must agree across modes anyway."""
    x, y = _ctr_data(rng)
    x = np.concatenate([x % 45, rng.integers(45, 50, size=(x.shape[0], 1), dtype="int32")], 1)
    results = {}
    for mode in ("eager", "graph", "xla"):
        keras.utils.set_random_seed(1)
        ids = keras.Input((4,), dtype="int32")
        emb = keras.layers.Embedding(50, 4)(ids)
        h = keras.layers.Flatten()(emb[:, :3])  # the fourth column is ignored
        h = keras.layers.Dense(8, activation="relu")(h)
        model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(h))
        model.compile(optimizer=cls(learning_rate=0.05, l1=1e-4, l21=2e-3),
                      loss="binary_crossentropy", run_eagerly=mode == "eager",
                      jit_compile=mode == "xla")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
        results[mode] = [w.numpy() for w in model.weights]
    zero_rows = {mode: np.all(w[0] == 0, axis=1) for mode, w in results.items()}
    assert np.all(zero_rows["eager"][45:]), "rows of ids with zero gradients should be zero"
    assert not np.all(zero_rows["eager"][:45]), "trained rows should not all be zero"
    for mode in ("graph", "xla"):
        np.testing.assert_array_equal(zero_rows[mode], zero_rows["eager"], err_msg=mode)
        for a, b in zip(results["eager"], results[mode]):
            assert rel_err(b, a) <= 1e-4, mode


# ---------------------------------------------------------------- fallback
def _run_python(code, env_extra=None):
    """Runs code in a fresh interpreter, outside the source tree (which `-c`
    would put first on sys.path), so it imports the package under test."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    package_parent = os.path.dirname(os.path.dirname(gl.__file__))
    env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd="/",
                          capture_output=True, text=True, timeout=300)


def test_missing_library_warns_once_and_falls_back(tmp_path):
    code = """
        import warnings, numpy as np, keras, tensorflow as tf
        import group_lasso_tf as gl
        from group_lasso_tf import ops
        ops._LIB_DIR = %r
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            v = keras.Variable(np.ones((4, 3), "float32"))
            opt = gl.GroupAdam(learning_rate=0.1, l21=1e-3)
            opt.apply([tf.ones([4, 3])], [v]); opt.apply([tf.ones([4, 3])], [v])
        msgs = [str(x.message) for x in w if "group_lasso_tf" in str(x.message)]
        print(len(msgs)); print(msgs[0]); print(gl.fused_available())
    """ % str(tmp_path)
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "1"
    assert "not built" in lines[1] and "pip install" in lines[1]
    assert lines[2] == "False"


def test_library_built_for_another_tensorflow_is_detected(tmp_path):
    code = """
        import warnings, sys, types
        fake = types.ModuleType("group_lasso_tf._build_info"); fake.TF_VERSION = "2.0.0"
        sys.modules["group_lasso_tf._build_info"] = fake
        from group_lasso_tf import ops
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            print(ops.fused_available())
        print(str(w[0].message))
    """
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("False") and "built for TensorFlow 2.0.0" in out and "rebuild" in out


# ------------------------------------------------------------ check_numerics
@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cls", ALL)
def test_check_numerics_rejects_non_finite_gradients_and_writes_nothing(cls, bad, mode, rng):
    """One bad value in one of several gradients (dense or IndexedSlices): an
    error naming that variable; no variable, slot or step counter changes."""
    kernel = tf.Variable(rng.normal(size=(4, 3)), name="kernel")
    table = tf.Variable(rng.normal(size=(6, 2)), name="table")
    opt = cls(learning_rate=0.1, l21=1e-3, check_numerics=True, weight_decay=0.01)
    good = [tf.constant(rng.normal(size=(4, 3))),
            tf.IndexedSlices(tf.constant(rng.normal(size=(2, 2))), tf.constant([1, 4]),
                             tf.constant([6, 2]))]
    opt.apply(good, [kernel, table])
    before = [v.numpy().copy() for v in [kernel, table] + list(opt.variables)]
    values = rng.normal(size=(2, 2))
    values[1, 0] = bad
    grads = [good[0], tf.IndexedSlices(tf.constant(values), tf.constant([1, 4]),
                                       tf.constant([6, 2]))]
    step = lambda: opt.apply(grads, [kernel, table])  # noqa: E731
    if mode == "graph":
        step = tf.function(step)
    with pytest.raises(tf.errors.InvalidArgumentError, match="table.*NaN or Inf"):
        step()
    for a, v in zip(before, [kernel, table] + list(opt.variables)):
        np.testing.assert_array_equal(a, v.numpy())


def test_without_check_numerics_a_nan_reaches_only_the_rows_it_touches(rng):
    table = tf.Variable(rng.normal(size=(6, 2)))
    opt = gl.GroupAdam(learning_rate=0.1, l21=1e-3)
    opt.apply([tf.IndexedSlices(tf.constant([[np.nan, 1.0]], tf.float64), tf.constant([3]),
                                tf.constant([6, 2]))], [table])
    rows_nan = np.isnan(table.numpy()).any(axis=1)
    assert rows_nan.tolist() == [False, False, False, True, False, False]


def test_check_numerics_covers_adahessian_estimates(rng):
    var = tf.Variable(rng.normal(size=(4, 3)))
    opt = gl.GroupAdaHessian(learning_rate=0.1, check_numerics=True)
    before = var.numpy().copy()
    hess = rng.normal(size=(4, 3))
    hess[2, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="Hessian estimate"):
        opt.apply([tf.ones((4, 3), tf.float64)], [var], hessians=[tf.constant(hess)])
    np.testing.assert_array_equal(var.numpy(), before)
    assert int(opt.iterations.numpy()) == 0


def test_multi_optimizer_routes_embeddings_to_a_group_optimizer(rng):
    """Keras's MultiOptimizer/OptimizerMap: the table gets GroupAdam (rows go to
    zero), the dense layers Keras's Adam; the same as applying each by hand."""
    x, y = _ctr_data(rng, n=96)

    def group():
        return gl.GroupAdam(learning_rate=0.05, l21=0.02)

    routed = _tiny_ctr_model(seed=4)
    routed.compile(
        optimizer=keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(
            keras.optimizers.Adam(learning_rate=0.01), {".*embedding.*": group()})),
        loss="binary_crossentropy")
    manual = _tiny_ctr_model(seed=4)
    table_opt, rest_opt = group(), keras.optimizers.Adam(learning_rate=0.01)
    loss_fn = keras.losses.BinaryCrossentropy()
    for start in range(0, 96, 32):
        xb, yb = x[start:start + 32], y[start:start + 32]
        routed.train_on_batch(xb, yb)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb[:, None], manual(xb, training=True))
        variables = manual.trainable_variables
        grads = tape.gradient(loss, variables)
        assert "embedding" in variables[0].path
        table_opt.apply(grads[:1], variables[:1])
        rest_opt.apply(grads[1:], variables[1:])
    for a, b in zip(routed.weights, manual.weights):
        assert rel_err(a.numpy(), b.numpy()) <= 1e-5, a.path
    table = routed.weights[0].numpy()
    assert np.all(table == 0, axis=1).any()


def test_documented_module_paths_resolve_after_a_plain_import():
    """README and docs write `group_lasso_tf.sparsity.SparsityTarget` and the like
    after `import group_lasso_tf`; each such path must resolve in a fresh process."""
    docs = [os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")]
    docs_dir = os.path.join(os.path.dirname(docs[0]), "docs")
    docs += [os.path.join(docs_dir, f) for f in os.listdir(docs_dir) if f.endswith(".md")]
    paths = set()
    for path in docs:
        with open(path) as f:
            # Submodules users import themselves (tf_keras needs the tf-keras package).
            paths |= {m for m in re.findall(r"group_lasso_tf\.([a-z_]+\.[A-Za-z_]+)", f.read())
                      if not m.startswith(("tf_keras.", "_core.", "export."))}
    assert "sparsity.SparsityTarget" in paths
    code = "import group_lasso_tf as gl, operator\n" + "".join(
        f"operator.attrgetter({p!r})(gl)\n" for p in sorted(paths))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
