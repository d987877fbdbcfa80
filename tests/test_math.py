"""Every implementation of the step against the float64 NumPy reference.

Implementations: the fused TF ops (dense, sparse int32/int64 ids), the
pybind11 module, tf_step.py eagerly and inside an XLA cluster. Inputs are
fresh random every run (see conftest.py for the seed). Sparse sequences
contain duplicate ids, rows first touched late, and an empty batch; the
strengths are chosen so that rows go to exactly zero while others survive.
"""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

import harness
import np_reference

IMPLS = {
    "fused": harness.run_fused,
    "core": harness.run_core,
    "reference": harness.run_reference,
    "reference_xla": functools.partial(harness.run_reference, jit_compile=True),
}


def make_problem(rng, rule, rows=16, dim=6):
    """Rows of very different scales, so a group threshold zeroes some only."""
    row_scale = 10.0 ** rng.uniform(-3, 0.5, size=(rows, 1))
    row_scale[0], row_scale[1] = 30.0, 1e-4  # one row that survives, one that goes
    var = rng.normal(size=(rows, dim)) * row_scale
    hp = dict(harness.BASE_HP[rule])
    if rule == "momentum":
        hp["nesterov"] = bool(rng.integers(2))
    if rule == "adahessian":
        hp["hessian_power"] = float(rng.choice([1.0, 0.5, 0.75]))
    if rule == "rmsprop":
        hp.update(rho=float(rng.uniform(0.8, 0.99)), centered=bool(rng.integers(2)),
                  momentum=float(rng.choice([0.0, rng.uniform(0.5, 0.95)])))
    lr = float(rng.uniform(0.05, 0.3))
    if rule == "ftrl":
        hp.update(l2_shrinkage=float(rng.uniform(0, 0.1)), beta=float(rng.uniform(0, 0.5)),
                  learning_rate_power=float(rng.choice([-0.5, -0.25])))
        strengths = dict(l1=float(rng.uniform(0, 0.05)), l21=float(rng.uniform(0.05, 0.2)),
                         l2=float(rng.uniform(0, 0.1)))
    else:
        l21_range = ((0.01, 0.04) if rule in ("adam", "amsgrad", "adahessian", "rmsprop")
                     else (0.1, 0.4))
        strengths = dict(l1=float(rng.uniform(0, 0.05)), l21=float(rng.uniform(*l21_range)),
                         l2=float(rng.uniform(0, 0.1)))
    state = np_reference.initial_state(rule, var.shape, hp)
    return var, state, hp, lr, strengths, row_scale


def step_inputs(rng, step, rows, dim, row_scale, sparse):
    """Gradient (and ids) of one step; ids reach further rows as steps go on."""
    if not sparse:
        return rng.normal(size=(rows, dim)) * row_scale, None
    if step == 3:
        return np.zeros((0, dim)), np.zeros((0,), np.int64)  # an empty batch
    reach = min(rows, 4 + 3 * step)  # rows >= reach are first touched later
    n = int(rng.integers(3, 12))
    ids = rng.integers(0, reach, size=n)
    ids[: n // 3] = ids[0]  # duplicates, always
    if step == 1:
        ids[-2:] = [0, 1]
    return rng.normal(size=(n, dim)) * row_scale[ids], ids


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("mode", ["dense", "sparse_int32", "sparse_int64"])
@pytest.mark.parametrize("rule", harness.RULES)
def test_float64_sequence_matches_numpy(rule, mode, impl, rng):
    var, state, hp, lr, strengths, row_scale = make_problem(rng, rule)
    rows, dim = var.shape
    index_dtype = np.int64 if mode.endswith("int64") else np.int32
    ours, our_state = var.copy(), {k: v.copy() for k, v in state.items()}
    ref, ref_state = var.copy(), {k: v.copy() for k, v in state.items()}
    zeroed, touched = set(), set()
    for t in range(1, 8):
        grad, ids = step_inputs(rng, t, rows, dim, row_scale, mode != "dense")
        hess = harness.hessian_like(rng, rule, grad)
        ours, our_state = IMPLS[impl](rule, ours, our_state, grad, ids, lr, hp=hp, t=t,
                                      index_dtype=index_dtype, hess=hess, **strengths)
        ref, ref_state = harness.run_numpy(rule, ref, ref_state, grad, ids, lr,
                                           hp=hp, t=t, hess=hess, **strengths)
        assert harness.rel_err(ours, ref) <= 1e-12, (t, ours, ref)
        for k in ref_state:
            assert harness.rel_err(our_state[k], ref_state[k]) <= 1e-12, (t, k)
        # A row the reference zeroes must be exactly +0.0 here too.
        ref_zero = np.all(ref == 0, axis=1)
        assert np.array_equal(np.all(ours == 0, axis=1), ref_zero)
        assert not np.any(np.signbit(ours[ref_zero]))
        zeroed |= set(np.flatnonzero(ref_zero))
        touched |= set(range(rows)) if ids is None else set(ids.tolist())
    # The sequence exercised both outcomes of the group threshold, and rows
    # never touched by a sparse step kept their initial values exactly.
    assert 1 in zeroed and 0 not in zeroed
    untouched = sorted(set(range(rows)) - touched)
    np.testing.assert_array_equal(ours[untouched], var[untouched])


@pytest.mark.parametrize("impl", ["fused", "core", "reference"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("rule", harness.RULES)
def test_float32_step_matches_numpy(rule, sparse, impl, rng):
    """float32 steps, each compared from the same (float32) state with float64 math."""
    var, state, hp, lr, strengths, row_scale = make_problem(rng, rule)
    rows, dim = var.shape
    ours = var.astype(np.float32)
    our_state = {k: v.astype(np.float32) for k, v in state.items()}
    for t in range(1, 6):
        grad, ids = step_inputs(rng, t, rows, dim, row_scale, sparse)
        grad = grad.astype(np.float32)
        hess = harness.hessian_like(rng, rule, grad)
        hess = None if hess is None else hess.astype(np.float32)
        ref, ref_state = harness.run_numpy(rule, ours.astype(np.float64),
                                           {k: v.astype(np.float64) for k, v in our_state.items()},
                                           grad, ids, lr, hp=hp, t=t, hess=hess, **strengths)
        ours, our_state = IMPLS[impl](rule, ours, our_state, grad, ids, np.float32(lr),
                                      hp=hp, t=t, hess=hess,
                                      **{k: np.float32(v) for k, v in strengths.items()})
        assert ours.dtype == np.float32
        assert harness.rel_err(ours, ref) <= 1e-5, t
        for k in ref_state:
            assert harness.rel_err(our_state[k], ref_state[k]) <= 1e-5, (t, k)


@pytest.mark.parametrize("rule", harness.RULES)
def test_zero_strengths_reduce_to_plain_update(rule, rng):
    """x' = x - a / p_new on a fresh row, for any initial weights (docs/algorithm.md)."""
    var, state, hp, lr, _, _ = make_problem(rng, rule)
    grad = rng.normal(size=var.shape)
    hess = harness.hessian_like(rng, rule, grad)
    ours, _ = harness.run_fused(rule, var, state, grad, None, lr, 0.0, 0.0, 0.0, hp, 1, hess=hess)
    _, a, _, p_new = np_reference._moments(rule, grad, var, state, lr, hp, 1, hess)
    if rule == "ftrl":  # FTRL's first step is not "fresh": Keras's own form
        return
    assert harness.rel_err(ours, var - a / p_new) <= 1e-12


def test_duplicate_ids_equal_summed_gradient(rng):
    """An update with duplicate ids equals one with the row gradients summed."""
    var, state, hp, lr, strengths, _ = make_problem(rng, "adam")
    ids = np.array([2, 5, 2, 2, 7, 5])
    grad = rng.normal(size=(6, var.shape[1]))
    summed_ids = np.array([2, 5, 7])
    summed = np.stack([grad[ids == i].sum(0) for i in summed_ids])
    a, sa = harness.run_fused("adam", var, state, grad, ids, lr, hp=hp, t=1, **strengths)
    b, sb = harness.run_fused("adam", var, state, summed, summed_ids, lr, hp=hp, t=1, **strengths)
    assert harness.rel_err(a, b) <= 1e-13
    for k in sa:
        assert harness.rel_err(sa[k], sb[k]) <= 1e-13


@pytest.mark.parametrize("rule", ["adam", "adahessian"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_duplicates_are_summed_in_batch_order_bit_for_bit(index_dtype, rule, rng):
    """The id grouping (cc/group_lasso/apply.h, SumDuplicateRows: hash
    tables that grow, batches of 4,096 ids or more split between the
    intra-op threads) keeps positions in batch order within an id: in
    float32 the step equals, bit for bit, the step on the gradient rows
    pre-summed one after another in that order; for AdaHessian, the Hessian
    estimate rows too. Batch sizes and id ranges (small and large, hot ids
    at either end) are drawn fresh every run."""
    hp = harness.BASE_HP[rule]
    dim = int(rng.integers(1, 6))
    for n, span in ((int(rng.integers(2, 64)), int(rng.integers(1, 100))),
                    (int(rng.integers(64, 4000)), int(rng.integers(1, 4000))),
                    (int(rng.integers(64, 4000)), int(rng.integers(20_000, 2**20))),
                    (int(rng.integers(16_384, 40_000)), int(rng.integers(2**17, 2**21)))):
        rows = span + int(rng.integers(0, 50))
        low = int(rng.integers(0, rows - span + 1))  # ids in [low, low + span)
        ids = low + np.minimum(rng.zipf(1.2, size=n) - 1, span - 1) * int(rng.choice([1, -1]))
        ids = np.where(ids < low, ids + span, ids)  # hot ids at either end of the range
        rng.shuffle(ids)
        var = rng.normal(size=(rows, dim)).astype(np.float32)
        state = {k: v.astype(np.float32) for k, v in
                 np_reference.initial_state(rule, var.shape, hp).items()}
        grad = rng.normal(size=(n, dim)).astype(np.float32)
        unique, inverse = np.unique(ids, return_inverse=True)

        def summed(rows_of_batch):
            out = np.zeros((len(unique), dim), np.float32)
            np.add.at(out, inverse, rows_of_batch)  # position after position, in float32
            return out

        hess = np.abs(rng.normal(size=(n, dim))).astype(np.float32) if rule == "adahessian" else None
        args = dict(lr=0.125, l1=0.01, l21=0.05, l2=0.01, hp=hp, t=1, index_dtype=index_dtype)
        a, sa = harness.run_fused(rule, var, state, grad, ids, hess=hess, **args)
        b, sb = harness.run_fused(rule, var, state, summed(grad), unique,
                                  hess=None if hess is None else summed(hess), **args)
        np.testing.assert_array_equal(a, b, err_msg=f"n={n} span={span}")
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"{k}: n={n} span={span}")


# One sparse step of the fused op, in a process of its own with
# argv[1] intra-op threads: inputs from the .npz argv[2], var and slots to argv[3].
_THREADS_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
import harness
data = dict(np.load(sys.argv[2]))
var, slots = harness.run_fused("adam", data.pop("var"), {k[5:]: data.pop(k) for k in list(data)
                               if k.startswith("slot_")}, data.pop("grad"), data.pop("ids"),
                               lr=0.125, l1=0.01, l21=0.05, l2=0.01, hp=harness.BASE_HP["adam"],
                               t=1, index_dtype=np.int64)
np.savez(sys.argv[3], var=var, **slots)
"""


def test_a_large_batch_steps_alike_on_any_number_of_threads(rng, tmp_path):
    """A batch of at least 4,096 ids is split by id hash into one part per
    intra-op thread (at most one per 2,048 ids), each summed and updated on
    its own thread: the step must not depend on how many there are. In float32, on
    a fresh Zipf batch: the pybind11 module (one part), this process's op,
    and the op in a process with 3 intra-op threads agree bit for bit, and
    all match the float64 reference on the summed rows."""
    rows, dim = int(rng.integers(2**15, 2**18)), int(rng.integers(1, 20))
    n = int(rng.integers(3 * 2048, 12 * 2048))
    ids = rng.choice(rows, size=n // 2)[np.minimum(rng.zipf(1.2, size=n) - 1, n // 2 - 1)]
    hp = harness.BASE_HP["adam"]
    var = rng.normal(size=(rows, dim)).astype(np.float32)
    state = {k: v.astype(np.float32) for k, v in
             np_reference.initial_state("adam", var.shape, hp).items()}
    grad = rng.normal(size=(n, dim)).astype(np.float32)
    args = dict(lr=0.125, l1=0.01, l21=0.05, l2=0.01, hp=hp, t=1, index_dtype=np.int64)
    serial, serial_state = harness.run_core("adam", var, state, grad, ids, **args)
    here, here_state = harness.run_fused("adam", var, state, grad, ids, **args)
    np.savez(tmp_path / "in.npz", var=var, grad=grad, ids=ids,
             **{"slot_" + k: v for k, v in state.items()})
    proc = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, "3", str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300, cwd="/",
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                 PYTHONPATH=os.pathsep.join([os.path.dirname(harness.__file__)] + sys.path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    three = dict(np.load(tmp_path / "out.npz"))
    for a, b in [(serial, here), (serial, three.pop("var"))]:
        np.testing.assert_array_equal(a, b)
    for k in serial_state:
        np.testing.assert_array_equal(serial_state[k], here_state[k])
        np.testing.assert_array_equal(serial_state[k], three[k])
    # The reference steps on the rows summed in float32 in batch order (what
    # the bit-for-bit test above pins down): a hot Zipf id has thousands of
    # duplicates, whose float32 sum alone can be 1e-5 off the float64 one.
    unique, inverse = np.unique(ids, return_inverse=True)
    summed = np.zeros((unique.size, dim), np.float32)
    np.add.at(summed, inverse, grad)
    ref, _ = harness.run_numpy("adam", var.astype(np.float64),
                               {k: v.astype(np.float64) for k, v in state.items()},
                               summed.astype(np.float64), unique, **args)
    assert harness.rel_err(serial, ref) <= 1e-5
    touched = np.unique(ids)
    assert not np.array_equal(serial[touched], var[touched])


@pytest.mark.parametrize("shape", [(7,), (5, 2, 3), ()])
def test_other_ranks_group_by_axis0(shape, rng):
    """Rank 1: each element is a row; rank 3: a row is a [2, 3] slice; rank 0: one row."""
    var = rng.normal(size=shape)
    hp = harness.BASE_HP["adam"]
    state = np_reference.initial_state("adam", var.shape, hp)
    grad = rng.normal(size=shape)
    args = dict(lr=0.25, l1=0.01, l21=0.5, l2=0.02, hp=hp, t=1)
    ours, _ = harness.run_fused("adam", var, state, grad, None, **args)
    ref, _ = harness.run_numpy("adam", var, state, grad, None, **args)
    assert harness.rel_err(ours, ref) <= 1e-12


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_large_batches_group_ids_like_the_reference(index_dtype, rng):
    """20,000 ids (the radix-sort path of the id grouping, two 9-bit passes for a
    200,000-row table), heavy with duplicates: fused op == tf_step.py in float64."""
    rows, dim, n = 200_000, 4, 20_000
    hp = harness.BASE_HP["adam"]
    var = rng.normal(size=(rows, dim))
    state = np_reference.initial_state("adam", var.shape, hp)
    ids = np.concatenate([rng.integers(0, rows, size=n // 2), rng.integers(0, 50, size=n // 2)])
    rng.shuffle(ids)
    grad = rng.normal(size=(n, dim))
    args = dict(lr=0.125, l1=0.01, l21=0.05, l2=0.01, hp=hp, t=1, index_dtype=index_dtype)
    ours, ours_state = harness.run_fused("adam", var, state, grad, ids, **args)
    ref, ref_state = harness.run_reference("adam", var, state, grad, ids, **args)
    assert harness.rel_err(ours, ref) <= 1e-12
    for k in ref_state:
        assert harness.rel_err(ours_state[k], ref_state[k]) <= 1e-12
    untouched = np.setdiff1d(np.arange(rows), ids)
    np.testing.assert_array_equal(ours[untouched], var[untouched])
