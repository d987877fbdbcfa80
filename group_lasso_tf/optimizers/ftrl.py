"""Group FTRL: Keras's FTRL-proximal with the group lasso added."""

import keras

from group_lasso_tf import rules
from group_lasso_tf.optimizers import base


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupFtrl(base.GroupLassoOptimizer):
    """FTRL-proximal (Keras's `Ftrl`) with a group-lasso term `l21`.

    In Keras's own units (the linear slot `z` is not scaled by the learning
    rate `eta`), with `k = -learning_rate_power`, per row of `d` elements:

        acc' = acc + g^2;   gs = g + 2 l2_shrinkage x
        z' = z + gs - (acc'^k - acc^k) / eta x
        s  = clip(z', -l1, l1) - z'
        x' = 0 if ||s|| <= l21 sqrt(d), else
             s (1 - l21 sqrt(d) / ||s||) / (acc'^k / eta + 2 (l2 + beta / (2 eta)))

    With `l21 = 0` this is `keras.optimizers.Ftrl` step for step (its
    `l1_regularization_strength` and `l2_regularization_strength` are `l1`
    and `l2` here). This is what the paper's official code calls Group
    Adagrad.

    Args:
        learning_rate: A float, a schedule or a callable. Defaults to `0.001`.
        learning_rate_power: Float <= 0. Defaults to `-0.5`.
        initial_accumulator_value: Starting value of the accumulator, >= 0.
            Defaults to `0.1`.
        l2_shrinkage: Float >= 0, the L2 shrinkage strength (Keras's
            `l2_shrinkage_regularization_strength`). Defaults to `0.0`.
        beta: Float >= 0, as Keras's `beta`. Defaults to `0.0`.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.FTRL
    # Keras's Ftrl recomputes the weights from its linear slot every step; a
    # change made to them from outside (weight decay, an EMA overwrite, a
    # constraint) only enters through `- sigma * x` of the next linear update,
    # which the fused step does too: no re-anchoring (tests/test_optimizer_api.py
    # compares weight decay and EMA with Keras's Ftrl).
    _reanchor_outside_changes = False

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5,
                 initial_accumulator_value=0.1, l2_shrinkage=0.0, beta=0.0,
                 name="group_ftrl", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._set_rule_hyper(
            initial_accumulator_value=initial_accumulator_value,
            learning_rate_power=learning_rate_power,
            l2_shrinkage=l2_shrinkage,
            beta=beta,
        )

    def _rule_hyper(self, dtype):
        return [
            base.hyper_tensor(self.l2_shrinkage, dtype),
            base.hyper_tensor(self.beta, dtype),
            base.hyper_tensor(self.learning_rate_power, dtype),
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate_power": self.learning_rate_power,
                "initial_accumulator_value": self.initial_accumulator_value,
                "l2_shrinkage": self.l2_shrinkage,
                "beta": self.beta,
            }
        )
        return config


GroupFtrl.__doc__ = base.fill_docstring(GroupFtrl.__doc__)
