"""The rule table: one entry per optimizer of the family (docs/algorithm.md).

The Python twin of `cc/group_lasso/rules.h`. Every optimizer is one moment
rule followed by the same proximal step; an entry says everything the rest
of the package needs of a rule:

* `name`: the rule's name, as the C++ table's `kName`;
* `op_name`: its ops are `ResourceApply<op_name>` and
  `ResourceSparseApply<op_name>` (plus `...Stored` for `uses_hessian` rules);
* `slots`: the slot names, in op-input order, the linear slot last; they are
  the optimizer's slot names too (`get_slot(variable, name)`);
* `hyper`: the op's hyperparameter inputs after lr, l1, l21, l2;
* `flag`: the rule's boolean op attribute, or None;
* `fresh_rows`: whether a row's first update uses `p_old = 0`;
* `uses_hessian`: whether the step reads a Hessian-diagonal estimate;
* `lr_scaled`: whether the linear slot (and so every threshold) is scaled by
  the learning rate (all but FTRL);
* `moments`: the moment rule in TensorFlow ops (`tf_step` runs it).

`tests/test_rule_table.py` checks this table against the ops and the
pybind11 module built from the C++ table.
"""

import dataclasses
from typing import Callable, Optional, Tuple

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    op_name: str
    slots: Tuple[str, ...]
    hyper: Tuple[str, ...]
    moments: Callable
    flag: Optional[str] = None
    fresh_rows: bool = True
    uses_hessian: bool = False
    lr_scaled: bool = True

    @property
    def moment_slots(self):
        """The slots before the linear slot."""
        return self.slots[:-1]

    def op_names(self, stored=False):
        """(dense op name, sparse op name)."""
        suffix = "Stored" if stored else ""
        return (f"ResourceApply{self.op_name}{suffix}",
                f"ResourceSparseApply{self.op_name}{suffix}")

    @property
    def multi_op_name(self):
        """The sparse step of many tables in one op, or None (Hessian rules)."""
        return None if self.uses_hessian else f"ResourceSparseApply{self.op_name}Multi"

    def thresholds(self, lr, l1, l21, l2, hyper, d):
        """(t1, t21, t2): the soft threshold, the group threshold (sqrt(d)
        included) and the denominator term of the proximal step."""
        sqrt_d = tf.constant(d ** 0.5, lr.dtype)
        if self.lr_scaled:
            return lr * l1, lr * l21 * sqrt_d, 2 * lr * l2
        # FTRL, in Keras's units: beta joins l2 in the denominator.
        return l1, l21 * sqrt_d, 2 * l2 + hyper[self.hyper.index("beta")] / lr


# ------------------------------------------------------------ moment rules
# moments(g, x, slots, lr, hyper, flag, hess) -> (new moment slots, a, p_old,
# p_new), element-wise: `slots` are the moment slots (linear excluded),
# `hyper` the rule's hyperparameters in `Rule.hyper` order, `flag` the value
# of its op attribute, `hess` the Hessian-diagonal estimate (uses_hessian
# rules only). The plain update would be x' = x - a / p_new.

def _adam_moments(g, x, slots, lr, hyper, flag, hess):
    del x, flag, hess
    beta1_power, beta2_power, beta1, beta2, epsilon = hyper
    m, v = slots
    alpha = lr * tf.sqrt(1 - beta2_power) / (1 - beta1_power)
    p_old = tf.sqrt(v) + epsilon
    # As Keras writes them (m += (g - m)(1 - b1)): zero strengths are Adam's bits.
    m = m + (g - m) * (1 - beta1)
    v = v + (g * g - v) * (1 - beta2)
    return [m, v], alpha * m, p_old, tf.sqrt(v) + epsilon


def _amsgrad_moments(g, x, slots, lr, hyper, flag, hess):
    m, v, vhat = slots
    (m, v), a, _, _ = _adam_moments(g, x, [m, v], lr, hyper, flag, hess)
    epsilon = hyper[4]
    p_old = tf.sqrt(vhat) + epsilon
    vhat = tf.maximum(vhat, v)
    return [m, v, vhat], a, p_old, tf.sqrt(vhat) + epsilon


def _half_power(v, half_power):
    # v^(k/2); k = 1 (the default) is a square root, as in the C++ kernels.
    return tf.where(tf.equal(half_power, 0.5), tf.sqrt(v), tf.pow(v, half_power))


def _adahessian_moments(g, x, slots, lr, hyper, flag, hess):
    del x, flag
    beta1_power, beta2_power, beta1, beta2, epsilon, hessian_power = hyper
    half = hessian_power / 2
    m, v = slots
    alpha = lr * _half_power(1 - beta2_power, half) / (1 - beta1_power)
    p_old = _half_power(v, half) + epsilon
    m = m + (g - m) * (1 - beta1)
    v = v + (hess * hess - v) * (1 - beta2)
    return [m, v], alpha * m, p_old, _half_power(v, half) + epsilon


def _adagrad_moments(g, x, slots, lr, hyper, flag, hess):
    del x, flag, hess
    (epsilon,) = hyper
    (accumulator,) = slots
    p_old = tf.sqrt(accumulator + epsilon)
    accumulator = accumulator + g * g
    return [accumulator], lr * g, p_old, tf.sqrt(accumulator + epsilon)


def _momentum_moments(g, x, slots, lr, hyper, flag, hess):
    del x, hess
    (momentum,) = hyper
    m = momentum * slots[0] - lr * g
    step = momentum * m - lr * g if flag else m  # flag: use_nesterov
    one = tf.ones_like(g)
    return [m], -step, one, one


def _pow_neg(x, power):
    # x^(-power); -0.5 (the default) is a square root, as in the C++ kernels.
    return tf.where(tf.equal(power, -0.5), tf.sqrt(x), tf.pow(x, -power))


def _ftrl_moments(g, x, slots, lr, hyper, flag, hess):
    del flag, hess
    l2_shrinkage, _, lr_power = hyper
    (accumulator,) = slots
    p_old = _pow_neg(accumulator, lr_power) / lr
    accumulator = accumulator + g * g
    return ([accumulator], g + 2 * l2_shrinkage * x, p_old,
            _pow_neg(accumulator, lr_power) / lr)


def _rmsprop_moments(g, x, slots, lr, hyper, flag, hess):
    del x, hess
    rho, momentum, epsilon = hyper
    m, v, average_gradient = slots

    def preconditioner(v, average_gradient):  # flag: centered
        return tf.sqrt(v - average_gradient * average_gradient + epsilon if flag else v + epsilon)

    p_old = preconditioner(v, average_gradient)
    # As Keras writes them, so that zero strengths reproduce its bits.
    v = rho * v + (1 - rho) * (g * g)
    if flag:
        average_gradient = rho * average_gradient + (1 - rho) * g
    p_new = preconditioner(v, average_gradient)
    # With momentum the buffer m' = mu m + lr g / p_new is the plain step:
    # a = p_new m' makes x - a / p_new = x - m', Keras's update.
    with_momentum = momentum > 0
    m = tf.where(with_momentum, momentum * m + lr * g / p_new, m)
    a = tf.where(with_momentum, p_new * m, lr * g)
    return [m, v, average_gradient], a, p_old, p_new


_ADAM_HYPER = ("beta1_power", "beta2_power", "beta1", "beta2", "epsilon")

ADAM = Rule("adam", "GroupAdam", ("m", "v", "linear"), _ADAM_HYPER, _adam_moments)
AMSGRAD = Rule("amsgrad", "GroupAMSGrad", ("m", "v", "vhat", "linear"), _ADAM_HYPER,
               _amsgrad_moments)
ADAHESSIAN = Rule("adahessian", "GroupAdaHessian", ("m", "v", "linear"),
                  _ADAM_HYPER + ("hessian_power",), _adahessian_moments, uses_hessian=True)
ADAGRAD = Rule("adagrad", "GroupAdagrad", ("accumulator", "linear"), ("epsilon",),
               _adagrad_moments)
MOMENTUM = Rule("momentum", "GroupMomentum", ("m", "linear"), ("momentum",),
                _momentum_moments, flag="use_nesterov")
FTRL = Rule("ftrl", "GroupFtrl", ("accumulator", "linear"), ("l2_shrinkage", "beta", "lr_power"),
            _ftrl_moments, fresh_rows=False, lr_scaled=False)

RMSPROP = Rule("rmsprop", "GroupRMSprop", ("m", "v", "average_gradient", "linear"),
               ("rho", "momentum", "epsilon"), _rmsprop_moments, flag="centered")

# Every rule, once, in the order of the C++ table (GROUP_LASSO_RULES).
RULES = {rule.name: rule
         for rule in (ADAM, AMSGRAD, ADAHESSIAN, ADAGRAD, MOMENTUM, FTRL, RMSPROP)}


def get(rule):
    """The `Rule` of a name (or the Rule itself); a ValueError naming the
    known rules otherwise."""
    if isinstance(rule, Rule):
        return rule
    try:
        return RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"`rule` must be one of {sorted(RULES)}, got {rule!r}") from None
