"""The group-lasso step in TensorFlow ops: the production path where the
fused C++ ops cannot run.

The same math as `cc/group_lasso/prox.h` and `apply.h` (docs/algorithm.md),
for every rule of the table (`rules.py`, whose `moments` are the twin of
`rules.h`). The optimizers run it

* inside XLA clusters (`jit_compile=True`), where custom ops cannot run,
* when the op library is missing or unusable (`ops.py`),

and for `survival_strengths` and `shrink_rows` (`sparsity.SparsityTarget`).
The tests check it against the fused ops and a float64 NumPy model.

Each function takes the same inputs, in the same order, as the fused op of
its rule: slots (linear last), then lr, l1, l21, l2 and the rule's own
hyperparameters (`Rule.hyper`), the value of its op attribute (`flag`) and,
for rules that read one, `hessian`, laid out like the gradient. `rule` is a
`rules.Rule` or its name.
"""

import math

import tensorflow as tf

from group_lasso_tf import rules as _rules
from group_lasso_tf.rows import as_rows, row_sums


def _check_hessian(rule, hessian):
    if rule.uses_hessian != (hessian is not None):
        raise ValueError(
            f"rule {rule.name!r} requires `hessian`" if hessian is None
            else f"`hessian` is not accepted by the rule {rule.name!r} "
                 "(it reads no Hessian estimate)")


def prox_rows(lin, p, t1, t21, t2):
    """The proximal step (cc/group_lasso/prox.h): the rows x of the weights
    given their linear slot `lin` ([rows, d]), preconditioner `p` and the
    thresholds t1 (l1), t21 (group) and denominator term t2 (l2):

        s = clip(lin, -t1, t1) - lin
        x = 0 if ||s|| <= t21, else s (1 - t21 / ||s||) / (p + t2)
    """
    s = tf.clip_by_value(lin, -t1, t1) - lin
    norm = tf.norm(s, axis=-1, keepdims=True)
    safe_norm = tf.where(norm > 0, norm, tf.ones_like(norm))
    factor = tf.where(
        t21 > 0,
        tf.where(norm <= t21, tf.zeros_like(norm), 1 - t21 / safe_norm),
        tf.ones_like(norm),
    )
    return tf.where(factor == 0, tf.zeros_like(s), s * factor / (p + t2))


def row_step(rule, x, slots, g, lr, l1, l21, l2, hyper, flag=False, hessian=None):
    """One step on a batch of rows: x, slots, g (and hessian) are [rows, d] tensors.

    Returns the new x and the new slots (linear last), as tensors.
    """
    rule = _rules.get(rule)
    _check_hessian(rule, hessian)
    d = x.shape[-1]
    lin = slots[-1]
    new_moments, a, p_old, p_new = rule.moments(g, x, slots[:-1], lr, hyper, flag, hessian)
    if rule.fresh_rows:
        # A row never updated has an all-zero linear slot; its first update
        # uses p_old = 0, which makes the step exact for any initial weights.
        fresh = tf.reduce_all(tf.equal(lin, 0), axis=-1, keepdims=True)
        p_old = tf.where(fresh, tf.zeros_like(p_old), p_old)
    t1, t21, t2 = rule.thresholds(lr, l1, l21, l2, hyper, d)
    lin = lin + a - (p_new - p_old) * x
    return prox_rows(lin, p_new, t1, t21, t2), new_moments + [lin]


def preconditioner(rule, x, slots, lr, hyper, flag=False):
    """p of the rows' current moment slots (the p_new of their last step)."""
    rule = _rules.get(rule)
    zeros = tf.zeros_like(x)
    hess = zeros if rule.uses_hessian else None
    return rule.moments(zeros, x, slots[:-1], lr, hyper, flag, hess)[2]


def survival_strengths(rule, x, linear, lr, l1, l2, hyper):
    """Per row ([rows] tensor): the smallest `l21` at which the proximal step
    of the row's linear slot `linear` gives an all-zero row, i.e.
    ||clip(lin, -t1, t1) - lin|| over the group threshold per unit of l21
    (`lr * sqrt(d)`; `sqrt(d)` for FTRL, in Keras's units). A row is zero
    after `shrink_rows` at strength l21 exactly when its survival strength is
    <= l21. Rows never trained (all-zero linear slot, non-zero weights) get
    NaN: no strength zeroes them, `shrink_rows` leaves them as they are.
    """
    rule = _rules.get(rule)
    d = x.shape[-1]
    t1, per_l21, _ = rule.thresholds(lr, l1, tf.ones_like(lr), l2, hyper, d)
    norm = tf.norm(tf.clip_by_value(linear, -t1, t1) - linear, axis=-1)
    never_trained = tf.logical_and(tf.reduce_all(tf.equal(linear, 0), axis=-1),
                                   tf.reduce_any(tf.not_equal(x, 0), axis=-1))
    return tf.where(never_trained, tf.constant(math.nan, x.dtype), norm / per_l21)


def shrink_rows(rule, x, slots, lr, l1, l21, l2, hyper, flag=False):
    """The rows x as the proximal step gives them from their current slots at
    these strengths: the step of every trained row re-applied, so that a row
    not updated since the strengths changed does not keep weights of the old
    ones. Rows never trained (all-zero linear slot) keep their weights.
    """
    rule = _rules.get(rule)
    d = x.shape[-1]
    lin = slots[-1]
    p = preconditioner(rule, x, slots, lr, hyper, flag)
    t1, t21, t2 = rule.thresholds(lr, l1, l21, l2, hyper, d)
    trained = tf.reduce_any(tf.not_equal(lin, 0), axis=-1, keepdims=True)
    return tf.where(trained, prox_rows(lin, p, t1, t21, t2), x)


def apply_dense(rule, var, slots, grad, lr, l1, l21, l2, hyper, flag=False, hessian=None):
    """Updates tf.Variables `var` and `slots` in place with a dense gradient."""
    rule = _rules.get(rule)
    _check_hessian(rule, hessian)
    shape = tf.shape(var)
    x = as_rows(var.read_value())
    if x.shape[-1] is None or 0 in x.shape:
        return tf.no_op()
    if hessian is not None:
        hessian = as_rows(tf.convert_to_tensor(hessian, var.dtype))
    new_x, new_slots = row_step(
        rule,
        x,
        [as_rows(s.read_value()) for s in slots],
        as_rows(tf.convert_to_tensor(grad, var.dtype)),
        lr, l1, l21, l2, hyper, flag, hessian,
    )
    updates = [s.assign(tf.reshape(t, shape)) for s, t in zip(slots, new_slots)]
    updates.append(var.assign(tf.reshape(new_x, shape)))
    return tf.group(updates)


def apply_sparse(rule, var, slots, grad, indices, lr, l1, l21, l2, hyper, flag=False,
                 hessian=None):
    """Lazy update of the rows of `var` named by `indices` (duplicates summed).

    `hessian` (rules with `uses_hessian`) has one row per index, like `grad`,
    and its duplicates are summed too.

    Out-of-range ids fail an assertion before anything is written; inside an
    XLA cluster assertions are dropped by the compiler, so ids must be valid.
    """
    rule = _rules.get(rule)
    _check_hessian(rule, hessian)
    rows = tf.shape(var, out_type=indices.dtype)[0]
    checks = [
        tf.debugging.assert_less(indices, rows, message="indices must be < the variable's rows"),
        tf.debugging.assert_non_negative(indices, message="indices must be >= 0"),
    ]
    with tf.control_dependencies(checks):
        indices = tf.identity(indices)
    n = tf.shape(indices)[0]
    d = var.shape.num_elements() // var.shape[0] if var.shape[0] else 0
    flat = lambda t: tf.reshape(t, [n, d])  # noqa: E731
    g = flat(row_sums(grad, indices))
    if hessian is not None:
        hessian = flat(row_sums(tf.convert_to_tensor(hessian, var.dtype), indices))
    new_x, new_slots = row_step(
        rule,
        flat(tf.gather(var, indices)),
        [flat(tf.gather(s, indices)) for s in slots],
        g, lr, l1, l21, l2, hyper, flag, hessian,
    )
    full = tf.shape(grad)
    updates = [
        s.scatter_update(tf.IndexedSlices(tf.reshape(t, full), indices))
        for s, t in zip(slots, new_slots)
    ]
    updates.append(var.scatter_update(tf.IndexedSlices(tf.reshape(new_x, full), indices)))
    return tf.group(updates)
