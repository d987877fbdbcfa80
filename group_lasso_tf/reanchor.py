"""Re-anchoring: the linear slot that makes the next step start from weights
changed outside the optimizer (docs/algorithm.md#weights-changed-outside-the-step).

In the FTRL-style form of the family the linear slot, not the weights,
carries the optimizer's state. After Keras's decoupled weight decay, an EMA
overwrite or a constraint changed the weights, every backend (fused ops or
`tf_step`) calls `reanchor_dense`, the inverse of the proximal step.
"""

import tensorflow as tf

from group_lasso_tf import rules as _rules
from group_lasso_tf import tf_step
from group_lasso_tf.rows import as_rows


def anchor_linear(rule, x, slots, lr, l1, l21, l2, hyper, flag=False):
    """The linear slot for which the proximal step returns `x` unchanged.

    The inverse of the proximal step at the current preconditioner and
    thresholds, per row

        u = (p + t2) x;   s = u (||u|| + t21) / ||u||;   lin = -s - sign(s) t1

    and lin = 0 for an all-zero row (a fresh row for the next step). x and
    slots are [rows, d] tensors; the moment slots are not changed.
    """
    rule = _rules.get(rule)
    d = x.shape[-1]
    p = tf_step.preconditioner(rule, x, slots, lr, hyper, flag)
    t1, t21, t2 = rule.thresholds(lr, l1, l21, l2, hyper, d)
    u = (p + t2) * x
    norm = tf.norm(u, axis=-1, keepdims=True)
    safe_norm = tf.where(norm > 0, norm, tf.ones_like(norm))
    s = u * ((safe_norm + t21) / safe_norm)
    return tf.where(norm > 0, -s - tf.sign(s) * t1, tf.zeros_like(s))


def reanchor_dense(rule, var, slots, lr, l1, l21, l2, hyper, flag=False):
    """Sets the linear slot (slots[-1]) of every row from var (see anchor_linear)."""
    shape = tf.shape(var)
    x = as_rows(var.read_value())
    lin = anchor_linear(rule, x, [as_rows(s.read_value()) for s in slots], lr, l1, l21, l2,
                        hyper, flag)
    return slots[-1].assign(tf.reshape(lin, shape))
