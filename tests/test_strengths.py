"""Strengths that change during training (issue 9): schedules and callables of
the step, `set_strength` between steps without retracing, per-variable
strengths and their serialization (`sparsity.SparsityTarget`, which sets
them, is tested in test_sparsity_target.py).

Values are checked against the float64 NumPy reference of docs/algorithm.md fed the
strengths each step should have seen, on fresh random inputs every run.
"""


import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
import np_reference as npr
from harness import rel_err

RULES = {"adam": gl.GroupAdam, "amsgrad": gl.GroupAMSGrad, "adagrad": gl.GroupAdagrad,
         "momentum": gl.GroupMomentum, "ftrl": gl.GroupFtrl, "rmsprop": gl.GroupRMSprop}
LR = 0.0625  # exactly representable: Keras keeps the learning rate in float32


def _sparse(rng, n, rows, width):
    ids = rng.integers(0, rows // 2 + 1, size=n)  # duplicates
    values = rng.normal(size=(n, width))
    return ids, values, tf.IndexedSlices(tf.constant(values), tf.constant(ids, tf.int64),
                                         tf.constant([rows, width], tf.int64))


def _run(opt, rule, steps, strengths_at, rng, variables=None):
    """Applies `steps` random steps to a dense variable and a table with `opt`
    and to NumPy copies with strengths_at(t, which) -> (l1, l21, l2)."""
    hp = npr.BASE_HP[rule]
    dense0, table0 = rng.normal(size=(5, 4)), rng.normal(size=(8, 3))
    dense = keras.Variable(dense0, dtype="float64", name="dense_kernel")
    table = keras.Variable(table0, dtype="float64", name="table_embeddings")
    np_vars = {"dense": dense0.copy(), "table": table0.copy()}
    state = {k: npr.initial_state(rule, v.shape, hp) for k, v in np_vars.items()}
    for t in range(1, steps + 1):
        g = rng.normal(size=dense0.shape)
        ids, values, slices = _sparse(rng, 0 if t == 3 else 6, 8, 3)
        yield t, opt, (dense, table)
        opt.apply([tf.constant(g), slices], [dense, table])
        np_vars["dense"], state["dense"] = npr.dense_step(
            rule, np_vars["dense"], state["dense"], g, LR, *strengths_at(t, "dense"), hp, t)
        np_vars["table"], state["table"] = npr.sparse_step(
            rule, np_vars["table"], state["table"], values, ids, LR,
            *strengths_at(t, "table"), hp, t)
    assert rel_err(dense.numpy(), np_vars["dense"]) < 1e-10
    assert rel_err(table.numpy(), np_vars["table"]) < 1e-10
    assert np.array_equal(np.all(table.numpy() == 0, axis=1),
                          np.all(np_vars["table"] == 0, axis=1))


def _rule_kwargs(rule):
    """The rule's hyperparameters, and the group term on the dense-gradient
    variable too (the NumPy reference regularizes every variable)."""
    return dict(npr.BASE_HP[rule], regularize_dense=True)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_schedules_and_callables_of_the_step(rule, rng):
    l21_late = float(rng.uniform(0.05, 0.3))
    # Zero during a warm-up of 3 steps, then l21_late; l1 ramps with the step.
    l21 = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.0, l21_late])
    ramp = float(rng.uniform(0.001, 0.01))

    def l1(step):
        return ramp * tf.cast(step, tf.float64)

    l2 = float(rng.uniform(0, 0.05))
    opt = RULES[rule](learning_rate=LR, l1=l1, l21=l21, l2=l2, **_rule_kwargs(rule))

    def strengths_at(t, _):
        return ramp * (t - 1), float(l21(t - 1)), l2  # schedules see the step before the update

    for _ in _run(opt, rule, 7, strengths_at, rng):
        pass
    assert opt.strength_variable(opt.iterations, "l21") is None  # not a regularized variable


def test_set_strength_between_steps_never_retraces(rng):
    rule, hp = "adam", npr.BASE_HP["adam"]
    opt = gl.GroupAdam(learning_rate=LR, l21=0.01, **_rule_kwargs(rule))
    dense0, table0 = rng.normal(size=(5, 4)), rng.normal(size=(8, 3))
    dense, table = keras.Variable(dense0), keras.Variable(table0)
    np_dense, np_table = dense0.copy(), table0.copy()
    s_dense, s_table = npr.initial_state(rule, dense0.shape, hp), npr.initial_state(
        rule, table0.shape, hp)
    opt.build([dense, table])
    traces = []

    @tf.function
    def step(g, values, ids):
        traces.append(1)  # runs once per trace
        opt.apply([g, tf.IndexedSlices(values, ids, tf.constant([8, 3], tf.int64))],
                  [dense, table])

    for t in range(1, 8):
        strengths = (0.0, 0.0, 0.0) if t == 4 else tuple(
            float(v) for v in rng.uniform(0, [0.02, 0.3, 0.05]))
        for name, value in zip(("l1", "l21", "l2"), strengths):
            opt.set_strength(name, value)
        g = rng.normal(size=dense0.shape)
        ids, values, _ = _sparse(rng, 6, 8, 3)
        step(tf.constant(g), tf.constant(values), tf.constant(ids, tf.int64))
        np_dense, s_dense = npr.dense_step(rule, np_dense, s_dense, g, LR, *strengths, hp, t)
        np_table, s_table = npr.sparse_step(rule, np_table, s_table, values, ids, LR,
                                            *strengths, hp, t)
        assert opt.get_strength(table, "l21") == strengths[1]
    assert len(traces) == 1
    assert rel_err(dense.numpy(), np_dense) < 1e-10
    assert rel_err(table.numpy(), np_table) < 1e-10


def test_strengths_are_held_in_one_variable_that_a_step_captures_once(rng):
    """However many variables are regularized, their number-valued strengths
    live in one float64 optimizer variable: a compiled step captures one
    more input per added table, the table itself (its slots come stacked in
    one tensor of handles, issue 17), or the table and each of its slots
    for a rule with no multi-table op, and none for its strengths. Each
    holder reads and assigns its own entry, exactly (values that float32
    would round)."""
    rule = sorted(RULES)[int(rng.integers(len(RULES)))]
    captures = []
    for n in (int(rng.integers(2, 4)), int(rng.integers(5, 10))):
        opt = RULES[rule](learning_rate=LR, l1=1e-3, l21=lambda step: 1e-2, l2=1e-4,
                          **npr.BASE_HP[rule])
        tables = [keras.Variable(rng.normal(size=(6, 3)), name=f"table_{i}") for i in range(n)]
        opt.build(tables)
        held = [v for v in opt.variables if v.name == "strengths"]
        assert len(held) == 1 and held[0].shape == (2 * n,)  # l21 is a schedule
        values = rng.uniform(0, 1, size=(n, 2)) + 1e-12  # not float32 numbers
        for table, (l1, l2) in zip(tables, values):
            opt.strength_variable(table, "l1").assign(l1)
            opt.set_strength("l2", float(l2), [table])
        for table, (l1, l2) in zip(tables, values):
            assert opt.get_strength(table, "l1") == l1
            assert opt.strength_variable(table, "l2").numpy() == l2
            assert opt.strength_variable(table, "l21") is None
        step = tf.function(lambda: opt.apply(
            [tf.IndexedSlices(tf.ones([2, 3], tf.float64), tf.constant([0, 4]),
                              tf.constant([6, 3])) for _ in tables], tables))
        captures.append((n, len(step.get_concrete_function().captured_inputs)))
    (n1, c1), (n2, c2) = captures
    per_table = 1 if opt._rule.multi_op_name else 1 + len(opt._group_slot_names)
    assert c2 - c1 == (n2 - n1) * per_table


@pytest.mark.parametrize("rule", ["adam", "ftrl"])
def test_per_variable_strengths(rule, rng):
    default = tuple(float(v) for v in rng.uniform(0, [0.01, 0.1, 0.02]))
    table_l21 = float(rng.uniform(0.1, 0.5))
    dense_l1 = float(rng.uniform(0.01, 0.05))
    holder = {}

    def strengths_at(t, which):
        if which == "table":
            return default[0], table_l21, default[2]
        return dense_l1, default[1], default[2]

    opt = RULES[rule](learning_rate=LR, l1=default[0], l21=default[1], l2=default[2],
                      per_variable={"table_": {"l21": table_l21}, "nothing_matches": {"l1": 9.0}},
                      **_rule_kwargs(rule))
    gen = _run(opt, rule, 6, strengths_at, rng)
    t, _, (dense, table) = next(gen)
    # A variable as the key, added before the optimizer is built.
    opt.per_variable.append((dense, {"l1": dense_l1}))
    holder["dense"] = dense
    for _ in gen:
        pass
    assert opt.get_strength(table, "l21") == pytest.approx(table_l21, rel=1e-15)
    assert opt.get_strength(dense, "l1") == pytest.approx(dense_l1, rel=1e-15)
    assert opt.get_strength(dense, "l21") == pytest.approx(default[1], rel=1e-15)
    assert opt.strength_variable(table, "l21").dtype == "float64"


def test_unregularized_wins_over_per_variable():
    opt = gl.GroupAdam(learning_rate=LR, l21=0.5, per_variable={"table": {"l21": 1.0}},
                       unregularized=["table"])
    table = keras.Variable(np.ones((4, 2)), name="table")
    opt.apply([tf.ones((4, 2), tf.float64)], [table])
    assert opt.strength_variable(table) is None
    assert opt.get_strength(table, "l21") == 0.0
    np.testing.assert_allclose(table.numpy(), 1 - LR, rtol=1e-6)  # plain Adam step


def test_strength_errors_name_the_argument():
    with pytest.raises(ValueError, match="`l21`"):
        gl.GroupAdam(l21=-1.0)
    with pytest.raises(ValueError, match="per_variable.*'l3'"):
        gl.GroupAdam(per_variable={"x": {"l3": 1.0}})
    with pytest.raises(ValueError, match=r"per_variable\['x'\]\['l21'\].*>= 0"):
        gl.GroupAdam(per_variable={"x": {"l21": -2.0}})
    with pytest.raises(TypeError, match="per_variable"):
        gl.GroupAdam(per_variable=[("x",)])
    with pytest.raises(TypeError, match="per_variable"):
        gl.GroupAdam(per_variable={3: {"l21": 1.0}})
    opt = gl.GroupAdam(l21=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), l1=0.1)
    with pytest.raises(ValueError, match="not built"):
        opt.set_strength("l1", 0.2)
    v = keras.Variable(np.ones((3, 2), np.float32))
    opt.build([v])
    with pytest.raises(ValueError, match="`l1`"):
        opt.set_strength("l1", -0.5)
    with pytest.raises(ValueError, match="schedule"):
        opt.set_strength("l21", 0.5)
    with pytest.raises(ValueError, match="`name`"):
        opt.set_strength("l22", 0.5)
    before = opt.get_strength(v, "l1")
    with pytest.raises(ValueError):
        opt.set_strength("l1", float("nan"))
    assert opt.get_strength(v, "l1") == before  # nothing written


def _table_model(rows=64, fields=2, dim=4):
    inputs = keras.Input((fields,), dtype="int32")
    x = keras.layers.Embedding(rows, dim, name="table")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(x))


def test_save_and_load_keep_schedules_per_variable_and_set_strengths(tmp_path, rng):
    x = rng.integers(0, 64, size=(256, 2)).astype("int32")
    y = (rng.uniform(size=256) < 0.3).astype("float32")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 5, 0.5)
    model = _table_model()
    model.compile(optimizer=gl.GroupAdam(learning_rate=0.01, l21=schedule,
                                         per_variable={"table": {"l1": 1e-3, "l21": 1e-3}}),
                  loss="binary_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    table = model.get_layer("table").embeddings
    model.optimizer.set_strength("l21", 0.0125, [table])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert isinstance(loaded.optimizer.l21, keras.optimizers.schedules.ExponentialDecay)
    loaded_table = loaded.get_layer("table").embeddings
    assert loaded.optimizer.get_strength(loaded_table, "l21") == 0.0125
    assert loaded.optimizer.get_strength(loaded_table, "l1") == pytest.approx(1e-3, rel=1e-15)
    head = loaded.get_layer("head").kernel
    assert loaded.optimizer.strength_variable(head, "l21") is None  # the schedule
    model.train_on_batch(x[:64], y[:64])
    loaded.train_on_batch(x[:64], y[:64])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
