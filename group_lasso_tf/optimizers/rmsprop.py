"""Group RMSprop: RMSprop with the sparse group lasso."""

import keras

from group_lasso_tf import rules
from group_lasso_tf.optimizers import base


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupRMSprop(base.GroupLassoOptimizer):
    """RMSprop with sparse-group-lasso regularization, applied in one proximal step.

    Per row of `d` elements with learning rate `eta`, decay `rho` and
    momentum `mu` (`lin` is the linear slot):

        v' = rho v + (1 - rho) g^2
        centered:  mg' = rho mg + (1 - rho) g;  p = sqrt(v - mg^2 + epsilon)
        otherwise:                              p = sqrt(v + epsilon)
        a  = eta g                          if mu = 0
           = p_new m',  m' = mu m + eta g / p_new   otherwise
        lin' = lin + a - (p_new - p_old) x     (p_old = 0 on a row's first update)
        s  = clip(lin', -eta l1, eta l1) - lin'
        x' = 0                                       if ||s|| <= eta l21 sqrt(d)
             s (1 - eta l21 sqrt(d) / ||s||) / (p_new + 2 eta l2)   otherwise

    (`mg` is the slot `average_gradient`.) With `l1 = l21 = l2 = 0` this is
    `keras.optimizers.RMSprop` step for step: `x' = x - eta g / p_new`, or
    `x' = x - m'` with momentum. The slots `m` and `average_gradient` exist
    whatever `momentum` and `centered` are (the fused ops take a fixed set of
    slots); they stay zero when unused.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.001`.
        rho: Float in [0, 1], the decay of the average of squared gradients.
            Defaults to `0.9`.
        momentum: Float in [0, 1]. Defaults to `0.0`.
        epsilon: Added to the average of squared gradients under the square
            root. Defaults to `1e-7`.
        centered: Boolean; if `True`, gradients are normalized by an estimate
            of their variance (the mean square minus the squared mean).
            Defaults to `False`.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.RMSPROP
    # Checked (and `centered` made a bool) on every base, tf_keras's included.
    _argument_checks = {"rho": base.check_unit_float,
                        "centered": lambda name, value: bool(value)}

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 name="group_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._set_rule_hyper(rho=rho, momentum=momentum, epsilon=epsilon, centered=centered)

    def _rule_hyper(self, dtype):
        return [base.hyper_tensor(self.rho, dtype), base.hyper_tensor(self.momentum, dtype),
                base.hyper_tensor(self.epsilon, dtype)]

    def _rule_flag(self):
        return self.centered

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                       "centered": self.centered})
        return config


GroupRMSprop.__doc__ = base.fill_docstring(GroupRMSprop.__doc__)
