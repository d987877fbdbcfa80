"""`sparsity.SparsityTarget` and what it stands on: survival strengths,
re-applied proximal steps, which rows count, and the dead-layer warning.

The law sets `l21` at a quantile of the rows' survival strengths and
re-applies the proximal step, so it must reach any target on any data; these
tests check that on a generated family of CTR-like tasks (bench/ctr_tasks.py,
fresh draws every run) and on the Criteo and Avazu samples.
"""

import os
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from group_lasso_tf import sparsity
from group_lasso_tf.optimizers.base import DEAD_ROW_FRACTION

import np_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import ctr_tasks  # noqa: E402

RULES = list(ctr_tasks.OPTIMIZERS)
TOLERANCE = 0.02  # points of sparsity the law may miss by (issue: within 2 points)


def _table_model(rows=64, fields=2, dim=4, dtype=None):
    inputs = keras.Input((fields,), dtype="int32")
    x = keras.layers.Embedding(rows, dim, name="table", dtype=dtype)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head",
                                                  dtype=dtype)(x))


def _trained_table(rule, rng, rows=300, dim=4, lr=None, l1=1e-4):
    """A table model trained a few steps by the group optimizer of `rule`
    (float64 weights; ids above rows // 2 never seen), and that optimizer."""
    hp = dict(np_reference.BASE_HP[rule])
    # A power of two: Keras keeps the learning rate in float32.
    lr = lr or 2.0 ** round(np.log2(ctr_tasks.LEARNING_RATES[rule]))
    optimizer = ctr_tasks.OPTIMIZERS[rule](learning_rate=lr, l1=l1, l21=1e-4, **hp)
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    model = _table_model(rows, dim=dim, dtype="float64")
    x = rng.integers(0, rows // 2, size=(512, 2)).astype("int32")
    y = (rng.uniform(size=512) < 1 / (1 + np.exp(-(x[:, 0] % 5 - 2.0)))).astype("float64")
    fit_model = gl.hessian.wrap(model) if rule == "adahessian" else model
    fit_model.compile(optimizer=optimizer, loss="binary_crossentropy")
    fit_model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    return model.get_layer("table").embeddings, optimizer, hp, lr


def _numpy_preconditioner(rule, table, optimizer, hp, lr):
    state = {name: optimizer.get_slot(table, slot).numpy()
             for name, slot in zip(np_reference.SLOTS[rule], optimizer._group_slot_names)}
    x = table.numpy()
    t = float(optimizer.iterations.numpy())
    _, _, p, _ = np_reference._moments(rule, np.zeros_like(x), x, state, lr, hp, t,
                                       np.zeros_like(x))
    return state["linear"], p


@pytest.mark.parametrize("rule", RULES)
def test_survival_strengths_and_shrink_rows_follow_the_proximal_step(rule, rng):
    """Against float64 NumPy from the optimizer's own slots: survival
    strength = ||l1-shrunk linear slot|| / (lr sqrt(d)) (sqrt(d) for FTRL),
    NaN for rows never trained; `shrink_rows` at the strengths of the last
    step gives back the fused op's weights; at a new l21 exactly the rows
    whose survival strength is <= l21 are zero, the others are the NumPy
    proximal step of their slots, and never-trained rows keep their values."""
    table, optimizer, hp, lr = _trained_table(rule, rng)
    l1 = 1e-4
    d = table.shape[1]
    lin, p = _numpy_preconditioner(rule, table, optimizer, hp, lr)
    t1, per_l21 = (l1, np.sqrt(d)) if rule == "ftrl" else (lr * l1, lr * np.sqrt(d))
    s = np.clip(lin, -t1, t1) - lin
    expected = np.linalg.norm(s, axis=1) / per_l21
    before = table.numpy()
    never = np.all(lin == 0, axis=1) & np.any(before != 0, axis=1)
    assert 0 < never.sum() < len(never)
    survival = optimizer.survival_strengths(table).numpy()
    np.testing.assert_array_equal(np.isnan(survival), never)
    np.testing.assert_allclose(survival[~never], expected[~never], rtol=1e-10, atol=1e-300)

    optimizer.shrink_rows([table])  # unchanged strengths: the weights of the fused step
    np.testing.assert_allclose(table.numpy(), before, rtol=1e-9, atol=1e-12)

    level = float(np.quantile(survival[~never], rng.uniform(0.2, 0.8)))
    optimizer.set_strength("l21", level, [table])
    optimizer.shrink_rows([table])
    after = table.numpy()
    zero = np.all(after == 0, axis=1)
    np.testing.assert_array_equal(zero[~never], survival[~never] <= level)
    np.testing.assert_array_equal(after[never], before[never])
    t2 = hp["beta"] / lr if rule == "ftrl" else 0.0  # l2 = 0
    live = ~zero & ~never
    s, p = s[live], p[live]
    want = s * (1 - per_l21 * level / np.linalg.norm(s, axis=1, keepdims=True)) / (p + t2)
    np.testing.assert_allclose(after[live], want, rtol=1e-9)


def test_strength_at_sparsity_is_the_quantile():
    values = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0])
    for fraction in np.linspace(0, 1, 21):
        level = sparsity.strength_at_sparsity(values, fraction)
        k = int(round(fraction * values.size))
        assert np.sum(values <= level) == max(k, 2)  # the two zeros are zero at any l21
    assert sparsity.strength_at_sparsity(np.array([]), 0.5) is None


def _tied_strengths(rng):
    """Survival strengths with tie groups (rows with identical slots) of 1-30 rows."""
    groups = rng.integers(1, 31 if rng.integers(2) else 2, size=rng.integers(1, 60))
    values = rng.permutation(rng.uniform(1e-12, 1e-3, size=groups.size))
    if rng.integers(2):
        values[0] = 0.0  # rows zero at any l21 (through l1)
    return rng.permutation(np.repeat(values, groups))


def test_strength_at_count_takes_the_nearer_side_of_a_tie_group(rng):
    for _ in range(300):
        values = _tied_strengths(rng)
        k = int(rng.integers(0, values.size + 1))
        level = sparsity.strength_at_count(values, k)
        zeroed = np.sum(values <= level)
        # What a strength can give: 0 (if no strength is 0) or a whole group more.
        possible = np.unique(np.concatenate([[0] if values.min() > 0 else [],
                                             np.searchsorted(np.sort(values), values,
                                                             side="right")]))
        assert abs(zeroed - k) == np.min(np.abs(possible - k)), (k, zeroed)
        assert level >= 0 and not np.any(values == level) or level == 0


def test_unit_strengths_carry_what_ties_hold_back(rng):
    """The units' zero rows add up to the total within half of the largest
    tie group (or are the fewest possible: rows of strength 0 are zero at
    any l21); units without ties get their counts to the row."""
    for _ in range(100):
        values = [_tied_strengths(rng) for _ in range(rng.integers(1, 6))]
        fraction = float(rng.uniform(0, 1))
        levels = sparsity.unit_strengths(values, fraction)
        zeroed = [np.sum(v <= level) for v, level in zip(values, levels)]
        total = sum(v.size for v in values)
        largest = max(np.unique(v, return_counts=True)[1].max() for v in values)
        fewest = sum(np.sum(v <= 0) for v in values)
        assert abs(sum(zeroed) - round(fraction * total)) <= largest / 2 \
            or sum(zeroed) == fewest, (zeroed, fraction, total)
        distinct = [v for v in values if np.unique(v).size == v.size and v.min() > 0]
        if len(distinct) == len(values):
            assert list(zeroed) == list(sparsity.zero_counts([v.size for v in values], fraction))


def test_zero_counts_share_the_total_within_one_row_each(rng):
    for _ in range(200):
        rows = rng.integers(0, 50, size=rng.integers(1, 30)) * rng.integers(1, 20)
        fraction = float(rng.uniform(0, 1))
        counts = sparsity.zero_counts(rows, fraction)
        assert counts.sum() == round(fraction * rows.sum())
        assert np.all(np.abs(counts - fraction * rows) < 1) and np.all(counts <= rows)


def _assert_reaches(task, target, per_table):
    model, optimizer, x, y = ctr_tasks.build(task)
    control = sparsity.SparsityTarget(target, per_table=per_table)
    history = model.fit(x, y, batch_size=task.batch_size, epochs=task.epochs, verbose=0,
                        callbacks=[control])
    stats = sparsity.embedding_sparsity(model)
    reached = sparsity.overall_sparsity(stats)
    message = f"target {target:.3f}, reached {reached:.4f}, per_table={per_table}: " \
              f"{task.describe()}"
    assert abs(reached - target) <= TOLERANCE, message
    assert np.isfinite(history.history["loss"][-1]), message
    assert history.history["row_sparsity"][-1] == pytest.approx(reached)


# At least 30 fresh cases per run: each optimizer five times, a random target
# in [0.3, 0.95], per_table drawn, one case in three trained for one epoch.
# For CI's time: at most 100 steps and 30,000 rows, and GroupAdaHessian on at
# most 8 fields (tracing its second backward pass costs about 0.5 s a field).
@pytest.mark.parametrize("case", range(30))
def test_generated_family_reaches_the_target(case, rng):
    rule = RULES[case % len(RULES)]
    task = ctr_tasks.draw_task(rng, optimizer=rule, epochs=1 if case % 3 == 0 else None,
                               max_steps=100, max_rows=30_000,
                               max_fields=8 if rule == "adahessian" else 30)
    _assert_reaches(task, float(rng.uniform(0.3, 0.95)), bool(rng.integers(2)))


class CountingGroupAdam(gl.GroupAdam):
    """GroupAdam that counts Python calls of update_step (one per variable per trace)."""

    calls = 0

    def update_step(self, gradient, variable, learning_rate):
        CountingGroupAdam.calls += 1
        return super().update_step(gradient, variable, learning_rate)


def test_sparsity_follows_the_reference_without_retracing(rng):
    """After every update the sparsity is the reference (to one row), the
    train step is traced once, never-trained rows are not counted and keep
    their values, the other variables keep their l21, and the epoch logs
    carry the law's state."""
    rows = 400
    ids = rng.integers(0, rows - 100, size=(4096, 2)).astype("int32")  # 100 rows never seen
    y = (rng.uniform(size=4096) < 1 / (1 + np.exp(-(ids[:, 0] % 7 - 3.0)))).astype("float32")
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    model = _table_model(rows=rows)
    CountingGroupAdam.calls = 0
    model.compile(optimizer=CountingGroupAdam(learning_rate=0.01), loss="binary_crossentropy")
    table = model.get_layer("table").embeddings
    unseen = table.numpy()[rows - 100:].copy()
    control = sparsity.SparsityTarget(0.6, tables=["table"], update_every=4)
    history = model.fit(ids, y, batch_size=128, epochs=2, verbose=0, callbacks=[control])
    h = control.history
    assert h["step"][:3] == [4, 8, 12] and h["step"][-1] == 64
    counted = rows - 100
    for reference, reached in zip(h["reference"], h["sparsity"]):
        assert abs(reached - reference) <= 1 / counted + 1e-12, (reference, reached)
    assert h["reference"][0] < 0.2 and h["reference"][-1] == pytest.approx(0.6)
    assert CountingGroupAdam.calls == len(model.trainable_variables)  # one trace
    np.testing.assert_array_equal(table.numpy()[rows - 100:], unseen)
    stats = sparsity.row_sparsity(table, model.optimizer)
    assert stats.never_trained_rows == 100 and stats.counted_rows == counted
    assert stats.sparsity == pytest.approx(0.6, abs=1 / counted)
    assert model.optimizer.get_strength(table, "l21") == h["l21"][-1]
    assert model.optimizer.get_strength(model.get_layer("head").kernel, "l21") == 0.0
    assert history.history["row_sparsity"][-1] == stats.sparsity
    assert history.history["l21"][-1] == h["l21"][-1]


def test_sparsity_target_errors():
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="`target`"):
            sparsity.SparsityTarget(bad)
    for kwargs, name in (({"update_every": 0}, "update_every"), ({"begin_step": -1}, "begin_step"),
                         ({"end_step": 1.5}, "end_step")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            sparsity.SparsityTarget(0.5, **kwargs)
    x = np.zeros((64, 2), "int32")
    y = np.zeros(64, "float32")
    cases = [
        (keras.optimizers.Adam(), {}, TypeError, "group_lasso_tf optimizer"),
        (gl.GroupAdam(l21=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)), {},
         ValueError, "schedule"),
        (gl.GroupAdam(l21=1e-3), {"tables": ["no_such_table"]}, ValueError, "matched nothing"),
    ]
    for optimizer, kwargs, error, message in cases:
        model = _table_model()
        model.compile(optimizer=optimizer, loss="binary_crossentropy")
        with pytest.raises(error, match=message):
            model.fit(x, y, epochs=1, verbose=0,
                      callbacks=[sparsity.SparsityTarget(0.5, **kwargs)])
    control = sparsity.SparsityTarget(0.5)
    control.set_model(object())
    with pytest.raises(TypeError, match="Keras 3"):
        control.on_train_begin()


@pytest.mark.parametrize("l21", [1e-6, 1e-4, 1e-2, 1.0])
def test_dense_layer_with_nearly_all_rows_zero_is_warned_once(l21, rng):
    """With the group term on the Dense kernels (`regularize_dense=True`), a
    fixed l21 from the range users try, and one that kills the network:
    every Dense kernel left with >= 90% zero rows was named in a warning,
    which gives the remedy, and no kernel was named twice (a kernel may also
    have crossed 90% for a while and revived). By default the kernels
    get no group term, and none dies."""
    task = ctr_tasks.draw_task(rng, optimizer="adam", epochs=2, max_steps=100, max_rows=5_000,
                               max_fields=10)
    task.hidden = (32,)
    if l21 == 1.0:
        model, _, x, y = ctr_tasks.build(task, l21=l21)
        model.fit(x, y, batch_size=task.batch_size, epochs=1, verbose=0)
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.Dense):
                assert not np.any(np.all(layer.kernel.numpy() == 0, axis=1)), layer.name
    model, optimizer, x, y = ctr_tasks.build(task, l21=l21, regularize_dense=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=task.batch_size, epochs=task.epochs, verbose=0)
        model.fit(x, y, batch_size=task.batch_size, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if "group_lasso_tf:" in str(w.message)]
    dead = [layer.kernel.path for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dense)
            and np.mean(np.all(layer.kernel.numpy() == 0, axis=1)) >= DEAD_ROW_FRACTION]
    for path in dead:
        named = [m for m in messages if repr(path) in m]
        assert len(named) == 1, (path, messages)
        assert "per_variable" in named[0] and "unregularized" in named[0]
    named = [m.split("'")[1] for m in messages]
    assert len(set(named)) == len(named), messages
    if l21 == 1.0:
        assert dead, task.describe()


@pytest.mark.slow
@pytest.mark.parametrize("dataset,epochs", [("criteo", 1), ("criteo", 4), ("avazu", 1),
                                            ("avazu", 4)])
def test_real_click_logs_reach_the_target(dataset, epochs, rng):
    """The DeepFM example's model on the shared samples, with a target (and for
    4 epochs an optimizer) drawn each run: within 2 points, and it trains
    (4 epochs: AUC > 0.6; one epoch: within 0.03 of the same optimizer with
    zero strengths, since one epoch of GroupAdam alone ends at test AUC 0.439
    on Criteo for seed 67). One epoch trains GroupAdam: GroupFtrl at rate
    0.1 has not learned Avazu after one epoch (32 steps) even with zero
    strengths (test AUC 0.515-0.531 on seeds 0, 9, 18)."""
    import sparsity_target as bench

    bench.data_cache[dataset] = bench.quality.LOADERS[dataset]()
    name = str(rng.choice(list(bench.GROUP))) if epochs > 1 else "adam"
    target = float(rng.uniform(0.3, 0.95))
    # GroupFtrl at the benchmark's learning rate 0.2 trains badly on Avazu for
    # some seeds (test AUC 0.56 for 1 of seeds 90-99, Keras Ftrl too for
    # another); at 0.1 all ten gave 0.690-0.705.
    seed = int(rng.integers(100))
    row = bench.steered(dataset, name, target, seed=seed, trajectories={},
                        lr=0.1 if name == "ftrl" else None, epochs=epochs)
    assert abs(row["sparsity"] - target) <= TOLERANCE, row
    if epochs > 1:
        assert row["auc"] > 0.6, row
    else:
        data = bench.data_cache[dataset]
        plain = bench.fit(data, bench.GROUP[name][0](learning_rate=bench.GROUP[name][2]), seed,
                          epochs=epochs)
        assert row["auc"] > bench.quality.evaluate(plain, data)[0] - 0.03, row


@pytest.mark.slow
def test_per_table_under_mixed_float16_on_criteo(rng):
    """Two tables steered each on its own from l21 10x apart, under
    mixed_float16 (the law reaches through the LossScaleOptimizer); the
    other tables keep the optimizer's l21."""
    import sparsity_target as bench

    data = bench.quality.LOADERS["criteo"]()
    tables = ["embedding_6/", "embedding_10/"]
    control = sparsity.SparsityTarget(0.8, tables=tables, per_table=True)
    optimizer = gl.GroupAdam(learning_rate=2e-3, l21=1e-4,
                             per_variable={"embedding_10/": {"l21": 1e-5}})
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = bench.fit(data, optimizer, seed=int(rng.integers(100)), callbacks=[control],
                          epochs=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for name in ("embedding_6", "embedding_10"):
        stats = sparsity.row_sparsity(model.get_layer(name).embeddings, model.optimizer)
        assert abs(stats.sparsity - 0.8) <= 1 / stats.counted_rows, (name, stats)
    other = model.get_layer("embedding_0").embeddings
    assert optimizer.get_strength(other, "l21") == 1e-4
    assert tf.as_dtype(optimizer.iterations.dtype).is_integer
