"""Group Adagrad: Adagrad with the sparse group lasso (Yue et al., 2021)."""

import keras

from group_lasso_tf import rules
from group_lasso_tf.optimizers import base


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupAdagrad(base.GroupLassoOptimizer):
    """Adagrad with sparse-group-lasso regularization.

    Per row of `d` elements with learning rate `eta`:

        acc' = acc + g^2;   a = eta g;   p = sqrt(acc + epsilon)
        lin' = lin + a - (p_new - p_old) x      (p_old = 0 on a first update)
        s  = clip(lin', -eta l1, eta l1) - lin'
        x' = 0 if ||s|| <= eta l21 sqrt(d), else
             s (1 - eta l21 sqrt(d) / ||s||) / (p_new + 2 eta l2)

    With `l1 = l21 = l2 = 0` this is `keras.optimizers.Adagrad` step for
    step. (The official code's "Group Adagrad" is FTRL-style: see
    `GroupFtrl`.)

    Args:
        learning_rate: A float, a schedule or a callable. Defaults to `0.001`.
        initial_accumulator_value: Starting value of the accumulator, >= 0.
            Defaults to `0.1`.
        epsilon: Added to the accumulator under the square root. Defaults to
            `1e-7`.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.ADAGRAD

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 name="group_adagrad", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._set_rule_hyper(initial_accumulator_value=initial_accumulator_value, epsilon=epsilon)

    def _rule_hyper(self, dtype):
        return [base.hyper_tensor(self.epsilon, dtype)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config


GroupAdagrad.__doc__ = base.fill_docstring(GroupAdagrad.__doc__)
