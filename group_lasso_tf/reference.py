"""The group-lasso step in plain TensorFlow ops.

The same math as the C++ kernels (cc/group_lasso/rules.h and prox.h), used

* as the fallback when the op library is missing or unusable (`ops.py`),
* inside XLA clusters (`jit_compile=True`), where custom ops cannot run,
* as an oracle the fused ops are tested against.

Each rule takes the same inputs, in the same order, as the fused op of its
optimizer: slots (linear last), then lr, l1, l21, l2 and the rule's own
hyperparameters (`HYPER_NAMES`). The "adahessian" rule also takes `hessian`,
the Hessian-diagonal estimate, laid out like the gradient.
"""

import math

import tensorflow as tf

# Rules whose moment update reads a Hessian-diagonal estimate.
HESSIAN_RULES = ("adahessian",)

HYPER_NAMES = {
    "adam": ("beta1_power", "beta2_power", "beta1", "beta2", "epsilon"),
    "amsgrad": ("beta1_power", "beta2_power", "beta1", "beta2", "epsilon"),
    "adahessian": ("beta1_power", "beta2_power", "beta1", "beta2", "epsilon", "hessian_power"),
    "adagrad": ("epsilon",),
    "momentum": ("momentum",),
    "ftrl": ("l2_shrinkage", "beta", "lr_power"),
}


def _adam_step(g, x, slots, lr, h, nesterov, hess=None):
    del x, nesterov, hess
    beta1_power, beta2_power, beta1, beta2, eps = h
    m, v = slots[0], slots[1]
    alpha = lr * tf.sqrt(1 - beta2_power) / (1 - beta1_power)
    p_old = tf.sqrt(v) + eps
    m = m + (g - m) * (1 - beta1)
    v = v + (g * g - v) * (1 - beta2)
    return [m, v], alpha * m, p_old, tf.sqrt(v) + eps


def _amsgrad_step(g, x, slots, lr, h, nesterov, hess=None):
    del x, nesterov, hess
    beta1_power, beta2_power, beta1, beta2, eps = h
    m, v, vhat = slots[0], slots[1], slots[2]
    alpha = lr * tf.sqrt(1 - beta2_power) / (1 - beta1_power)
    p_old = tf.sqrt(vhat) + eps
    m = m + (g - m) * (1 - beta1)
    v = v + (g * g - v) * (1 - beta2)
    vhat = tf.maximum(vhat, v)
    return [m, v, vhat], alpha * m, p_old, tf.sqrt(vhat) + eps


def _half_power(v, half_power):
    # v^(k/2); k = 1 (the default) is a square root, as in the C++ kernels.
    return tf.where(tf.equal(half_power, 0.5), tf.sqrt(v), tf.pow(v, half_power))


def _adahessian_step(g, x, slots, lr, h, nesterov, hess=None):
    del x, nesterov
    beta1_power, beta2_power, beta1, beta2, eps, hessian_power = h
    half = hessian_power / 2
    m, v = slots[0], slots[1]
    alpha = lr * _half_power(1 - beta2_power, half) / (1 - beta1_power)
    p_old = _half_power(v, half) + eps
    m = m + (g - m) * (1 - beta1)
    v = v + (hess * hess - v) * (1 - beta2)
    return [m, v], alpha * m, p_old, _half_power(v, half) + eps


def _adagrad_step(g, x, slots, lr, h, nesterov, hess=None):
    del x, nesterov, hess
    (eps,) = h
    acc = slots[0]
    p_old = tf.sqrt(acc + eps)
    acc = acc + g * g
    return [acc], lr * g, p_old, tf.sqrt(acc + eps)


def _momentum_step(g, x, slots, lr, h, nesterov, hess=None):
    del x, hess
    (mu,) = h
    m = mu * slots[0] - lr * g
    step = mu * m - lr * g if nesterov else m
    one = tf.ones_like(g)
    return [m], -step, one, one


def _pow_neg(x, power):
    # x^(-power); -0.5 (the default) is a square root, as in the C++ kernels.
    return tf.where(tf.equal(power, -0.5), tf.sqrt(x), tf.pow(x, -power))


def _ftrl_step(g, x, slots, lr, h, nesterov, hess=None):
    del nesterov, hess
    l2_shrinkage, _, lr_power = h
    acc = slots[0]
    p_old = _pow_neg(acc, lr_power) / lr
    acc = acc + g * g
    return [acc], g + 2 * l2_shrinkage * x, p_old, _pow_neg(acc, lr_power) / lr


_STEPS = {
    "adam": _adam_step,
    "amsgrad": _amsgrad_step,
    "adahessian": _adahessian_step,
    "adagrad": _adagrad_step,
    "momentum": _momentum_step,
    "ftrl": _ftrl_step,
}


def _thresholds(rule, lr, l1, l21, l2, h, d):
    sqrt_d = tf.constant(math.sqrt(d), lr.dtype)
    if rule == "ftrl":
        beta = h[1]
        return l1, l21 * sqrt_d, 2 * l2 + beta / lr
    return lr * l1, lr * l21 * sqrt_d, 2 * lr * l2


def _check_hessian(rule, hessian):
    if (rule in HESSIAN_RULES) != (hessian is not None):
        raise ValueError(
            f"rule {rule!r} requires `hessian`" if hessian is None
            else f"`hessian` is only accepted by the rules {HESSIAN_RULES}, not {rule!r}"
        )


def row_step(rule, x, slots, g, lr, l1, l21, l2, hyper, nesterov=False, hessian=None):
    """One step on a batch of rows: x, slots, g (and hessian) are [rows, d] tensors.

    Returns the new x and the new slots (linear last), as tensors.
    """
    _check_hessian(rule, hessian)
    d = x.shape[-1]
    lin = slots[-1]
    new_moments, a, p_old, p_new = _STEPS[rule](g, x, slots[:-1], lr, hyper, nesterov, hessian)
    if rule != "ftrl":
        # A row never updated has an all-zero linear slot; its first update
        # uses p_old = 0, which makes the step exact for any initial weights.
        fresh = tf.reduce_all(tf.equal(lin, 0), axis=-1, keepdims=True)
        p_old = tf.where(fresh, tf.zeros_like(p_old), p_old)
    t1, t21, t2 = _thresholds(rule, lr, l1, l21, l2, hyper, d)
    lin = lin + a - (p_new - p_old) * x
    return prox_rows(lin, p_new, t1, t21, t2), new_moments + [lin]


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


def _preconditioner(rule, x, slots, lr, hyper, nesterov):
    """p of the rows' current moment slots (the p_new of their last step)."""
    zeros = tf.zeros_like(x)
    return _STEPS[rule](zeros, x, slots[:-1], lr, hyper, nesterov, zeros)[2]


def survival_strengths(rule, x, slots, lr, l1, l21, l2, hyper, nesterov=False):
    """Per row ([rows] tensor): the smallest `l21` at which the proximal step
    of the row's current linear slot gives an all-zero row, i.e.
    ||clip(lin, -t1, t1) - lin|| over the group threshold per unit of l21
    (`lr * sqrt(d)`; `sqrt(d)` for FTRL, in Keras's units). A row is zero
    after `shrink_rows` at strength l21 exactly when its survival strength is
    <= l21. Of `slots` only the linear slot (the last) is read. Rows never trained (all-zero linear slot, non-zero weights) get
    NaN: no strength zeroes them, `shrink_rows` leaves them as they are.
    """
    del l21
    d = x.shape[-1]
    lin = slots[-1]
    t1, per_l21, _ = _thresholds(rule, lr, l1, tf.ones_like(lr), l2, hyper, d)
    norm = tf.norm(tf.clip_by_value(lin, -t1, t1) - lin, axis=-1)
    never_trained = tf.logical_and(tf.reduce_all(tf.equal(lin, 0), axis=-1),
                                   tf.reduce_any(tf.not_equal(x, 0), axis=-1))
    return tf.where(never_trained, tf.constant(math.nan, x.dtype), norm / per_l21)


def shrink_rows(rule, x, slots, lr, l1, l21, l2, hyper, nesterov=False):
    """The rows x as the proximal step gives them from their current slots at
    these strengths: the step of every trained row re-applied, so that a row
    not updated since the strengths changed does not keep weights of the old
    ones. Rows never trained (all-zero linear slot) keep their weights.
    """
    d = x.shape[-1]
    lin = slots[-1]
    p = _preconditioner(rule, x, slots, lr, hyper, nesterov)
    t1, t21, t2 = _thresholds(rule, lr, l1, l21, l2, hyper, d)
    trained = tf.reduce_any(tf.not_equal(lin, 0), axis=-1, keepdims=True)
    return tf.where(trained, prox_rows(lin, p, t1, t21, t2), x)


def anchor_linear(rule, x, slots, lr, l1, l21, l2, hyper, nesterov=False):
    """The linear slot for which the proximal step returns `x` unchanged.

    For a variable changed outside the optimizer (Keras's decoupled weight
    decay, an EMA overwrite, a constraint), this is the linear slot that makes
    the next step start from the changed weights: the inverse of the
    proximal step at the current preconditioner and thresholds, per row

        u = (p + t2) x;   s = u (||u|| + t21) / ||u||;   lin = -s - sign(s) t1

    and lin = 0 for an all-zero row (a fresh row for the next step). x and
    slots are [rows, d] tensors; the moment slots are not changed.
    """
    d = x.shape[-1]
    p = _preconditioner(rule, x, slots, lr, hyper, nesterov)
    t1, t21, t2 = _thresholds(rule, lr, l1, l21, l2, hyper, d)
    u = (p + t2) * x
    norm = tf.norm(u, axis=-1, keepdims=True)
    safe_norm = tf.where(norm > 0, norm, tf.ones_like(norm))
    s = u * ((safe_norm + t21) / safe_norm)
    return tf.where(norm > 0, -s - tf.sign(s) * t1, tf.zeros_like(s))


def reanchor_dense(rule, var, slots, lr, l1, l21, l2, hyper, nesterov=False):
    """Sets the linear slot (slots[-1]) of every row from var (see anchor_linear)."""
    shape = tf.shape(var)
    x = as_rows(var.read_value())
    lin = anchor_linear(rule, x, [as_rows(s.read_value()) for s in slots], lr, l1, l21, l2,
                        hyper, nesterov)
    return slots[-1].assign(tf.reshape(lin, shape))


def as_rows(t):
    """The [rows, d] view of a tensor: rows along axis 0; a scalar is one row."""
    if t.shape.rank == 0:
        return tf.reshape(t, [1, 1])
    if t.shape.is_fully_defined():  # one op instead of four when tracing
        return tf.reshape(t, [t.shape[0], -1])
    return tf.reshape(t, [tf.shape(t)[0], -1])


def apply_dense(rule, var, slots, grad, lr, l1, l21, l2, hyper, nesterov=False, hessian=None):
    """Updates tf.Variables `var` and `slots` in place with a dense gradient."""
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
        lr, l1, l21, l2, hyper, nesterov, hessian,
    )
    updates = [s.assign(tf.reshape(t, shape)) for s, t in zip(slots, new_slots)]
    updates.append(var.assign(tf.reshape(new_x, shape)))
    return tf.group(updates)


def id_runs(indices):
    """For each position: the number of its id among the distinct ids, and
    whether it is the first position holding that id.

    Static shapes only (XLA clusters allow no tf.unique): a stable sort of the
    ids, runs of equal ids numbered, mapped back to positions.
    """
    n = tf.shape(indices)[0]
    order = tf.argsort(indices, stable=True)
    sorted_ids = tf.gather(indices, order)
    is_new = tf.logical_or(
        tf.equal(tf.range(n), 0), tf.not_equal(sorted_ids, tf.roll(sorted_ids, 1, axis=0))
    )
    rank = tf.argsort(order)  # position -> its place in sorted order
    run_sorted = tf.cumsum(tf.cast(is_new, tf.int32)) - 1
    return tf.gather(run_sorted, rank), tf.gather(is_new, rank)


def row_sums(values, indices):
    """`values` (one row per position) summed over the positions of each id,
    given back at every position. Duplicate ids then hold identical rows, so
    the order in which they are scattered is moot."""
    run_of_position, _ = id_runs(indices)
    summed = tf.math.unsorted_segment_sum(values, run_of_position, tf.shape(indices)[0])
    return tf.gather(summed, run_of_position)


def first_positions(indices):
    """Boolean mask: True at the first position of each distinct id."""
    return id_runs(indices)[1]


def rows_at(values, indices, target_indices):
    """Rows of (values, indices), summed per id, laid out on `target_indices`.

    The sum of each id's rows sits at the first position of that id in
    `target_indices`, zeros everywhere else (and ids absent from
    `target_indices` are dropped), so that summing duplicates over
    `target_indices`, as the sparse ops do, gives back each id's sum once.
    """
    n = tf.shape(target_indices)[0]
    combined = tf.concat([target_indices, tf.cast(indices, target_indices.dtype)], 0)
    zeros = tf.zeros(tf.concat([[n], tf.shape(values)[1:]], 0), values.dtype)
    sums = row_sums(tf.concat([zeros, values], 0), combined)[:n]
    first = tf.reshape(first_positions(target_indices), [-1] + [1] * (values.shape.rank - 1))
    return tf.where(first, sums, tf.zeros_like(sums))


def apply_sparse(rule, var, slots, grad, indices, lr, l1, l21, l2, hyper, nesterov=False,
                 hessian=None):
    """Lazy update of the rows of `var` named by `indices` (duplicates summed).

    `hessian` (rules in HESSIAN_RULES) has one row per index, like `grad`, and
    its duplicates are summed too.

    Out-of-range ids fail an assertion before anything is written; inside an
    XLA cluster assertions are dropped by the compiler, so ids must be valid.
    """
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
    _check_hessian(rule, hessian)
    g = flat(row_sums(grad, indices))
    if hessian is not None:
        hessian = flat(row_sums(tf.convert_to_tensor(hessian, var.dtype), indices))
    new_x, new_slots = row_step(
        rule,
        flat(tf.gather(var, indices)),
        [flat(tf.gather(s, indices)) for s in slots],
        g, lr, l1, l21, l2, hyper, nesterov, hessian,
    )
    full = tf.shape(grad)
    updates = [
        s.scatter_update(tf.IndexedSlices(tf.reshape(t, full), indices))
        for s, t in zip(slots, new_slots)
    ]
    updates.append(var.scatter_update(tf.IndexedSlices(tf.reshape(new_x, full), indices)))
    return tf.group(updates)
