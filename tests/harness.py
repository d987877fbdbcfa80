"""Calls one step of a rule through each implementation, from NumPy state.

Every runner takes float64/float32 NumPy arrays and returns the new variable
and slots as NumPy arrays, so tests can compare any implementation with the
float64 reference of np_reference.py.
"""

import numpy as np
import tensorflow as tf

from group_lasso_tf import _core, rules, tf_step
from group_lasso_tf.ops import apply_op

import np_reference

RULES = tuple(rules.RULES)

# Shared with the standalone CUDA harness (tests/gpu/run_harness.py), which
# must not import TensorFlow: they live in np_reference.
BASE_HP = np_reference.BASE_HP
hyper_list = np_reference.hyper_list


def hash_id(ids):
    """HashId of cc/group_lasso/apply.h, the hash the sparse ops group ids
    by: id * 0x9E3779B97F4A7C15 mod 2^64 (Fibonacci hashing), as uint64."""
    with np.errstate(over="ignore"):
        return np.asarray(ids).astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def slot_names(rule):
    return np_reference.SLOTS[rule]


def flag_of(hp):
    """The value of a rule's op attribute in its hyperparameters (use_nesterov
    of "momentum", centered of "rmsprop")."""
    return bool(hp.get("nesterov", False) or hp.get("centered", False))


def run_fused(rule, var, state, grad, ids, lr, l1, l21, l2, hp, t, index_dtype=np.int32,
              hess=None):
    dtype = var.dtype
    v = tf.Variable(var)
    slots = [tf.Variable(state[k].astype(dtype)) for k in slot_names(rule)]
    scalars = [tf.constant(x, dtype) for x in [lr, l1, l21, l2] + hyper_list(rule, hp, t)]
    flag = rules.get(rule).flag
    attrs = {flag: flag_of(hp)} if flag else {}
    dense_op, sparse_op = rules.get(rule).op_names()
    extra = [] if hess is None else [tf.constant(np.asarray(hess, dtype))]
    if ids is None:
        apply_op(dense_op)(
            v.handle, *[s.handle for s in slots], *scalars, tf.constant(grad), *extra, **attrs)
    else:
        apply_op(sparse_op)(
            v.handle, *[s.handle for s in slots], *scalars, tf.constant(grad), *extra,
            tf.constant(np.asarray(ids, index_dtype)), **attrs)
    return v.numpy(), {k: s.numpy() for k, s in zip(slot_names(rule), slots)}


def run_core(rule, var, state, grad, ids, lr, l1, l21, l2, hp, t, index_dtype=np.int32,
             hess=None):
    var = var.copy()
    slots = [state[k].astype(var.dtype).copy() for k in slot_names(rule)]
    args = dict(lr=lr, l1=l1, l21=l21, l2=l2, hyper=hyper_list(rule, hp, t),
                flag=flag_of(hp), hessian=hess)
    if ids is None:
        _core.apply_dense(rule, var, slots, grad, **args)
    else:
        _core.apply_sparse(rule, var, slots, grad, np.asarray(ids, index_dtype), **args)
    return var, dict(zip(slot_names(rule), slots))


def run_reference(rule, var, state, grad, ids, lr, l1, l21, l2, hp, t,
                  index_dtype=np.int32, jit_compile=None, hess=None):
    dtype = var.dtype
    v = tf.Variable(var)
    slots = [tf.Variable(state[k].astype(dtype)) for k in slot_names(rule)]

    def step():
        scalars = [tf.constant(x, dtype) for x in [lr, l1, l21, l2]]
        hyper = [tf.constant(x, dtype) for x in hyper_list(rule, hp, t)]
        flag = flag_of(hp)
        h = None if hess is None else tf.constant(np.asarray(hess, dtype))
        if ids is None:
            return tf_step.apply_dense(rule, v, slots, tf.constant(grad), *scalars, hyper,
                                       flag, h)
        return tf_step.apply_sparse(rule, v, slots, tf.constant(grad),
                                    tf.constant(np.asarray(ids, index_dtype)),
                                    *scalars, hyper, flag, h)

    if jit_compile is None:
        step()
    else:
        tf.function(lambda: step() and None, jit_compile=jit_compile)()
    return v.numpy(), {k: s.numpy() for k, s in zip(slot_names(rule), slots)}


def run_numpy(rule, var, state, grad, ids, lr, l1, l21, l2, hp, t, index_dtype=None,
              hess=None):
    if ids is None:
        return np_reference.dense_step(rule, var, state, grad, lr, l1, l21, l2, hp, t, hess)
    return np_reference.sparse_step(rule, var, state, grad, ids, lr, l1, l21, l2, hp, t, hess)


def hessian_like(rng, rule, grad):
    """A Hessian-diagonal estimate for rules that read one (None otherwise):
    random, of mixed signs (Hutchinson estimates can be negative)."""
    if rule != "adahessian":
        return None
    shape = np.shape(grad)
    return rng.normal(size=shape) * np.abs(grad) * 2 + 0.1 * rng.normal(size=shape)


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    diff = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return diff / scale if scale > 0 else diff
