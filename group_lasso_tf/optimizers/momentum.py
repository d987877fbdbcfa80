"""Group Momentum: SGD with momentum and the sparse group lasso (Yue et al., 2021)."""

import keras

from group_lasso_tf import rules
from group_lasso_tf.optimizers import base


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupMomentum(base.GroupLassoOptimizer):
    """SGD with (Nesterov) momentum and sparse-group-lasso regularization.

    Per row of `d` elements with learning rate `eta` and momentum `mu`:

        m' = mu m - eta g;   a = -m'  (Nesterov: a = -(mu m' - eta g));  p = 1
        lin' = lin + a - (1 - p_old) x          (p_old = 0 on a first update)
        s  = clip(lin', -eta l1, eta l1) - lin'
        x' = 0 if ||s|| <= eta l21 sqrt(d), else
             s (1 - eta l21 sqrt(d) / ||s||) / (1 + 2 eta l2)

    With `l1 = l21 = l2 = 0` this is `keras.optimizers.SGD(momentum,
    nesterov)` step for step.

    Args:
        learning_rate: A float, a schedule or a callable. Defaults to `0.01`.
        momentum: Float in [0, 1]. Defaults to `0.0` (as Keras's SGD).
        nesterov: Boolean; use Nesterov momentum. Defaults to `False`.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.MOMENTUM

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False,
                 name="group_momentum", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._set_rule_hyper(momentum=momentum, nesterov=bool(nesterov))

    def _rule_hyper(self, dtype):
        return [base.hyper_tensor(self.momentum, dtype)]

    def _rule_flag(self):
        return self.nesterov

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


GroupMomentum.__doc__ = base.fill_docstring(GroupMomentum.__doc__)
