"""Group Adam: Adam with the sparse group lasso (Yue et al., 2021)."""

import keras

from group_lasso_tf import rules
from group_lasso_tf.optimizers import base


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupAdam(base.GroupLassoOptimizer):
    """Adam with sparse-group-lasso regularization, applied in one proximal step.

    Per row of `d` elements, at step `t` with learning rate `eta`
    (`lin` is the linear slot, `eta` times the paper's `z`):

        m' = m + (1 - beta_1) (g - m);   v' = v + (1 - beta_2) (g^2 - v)
        a  = eta sqrt(1 - beta_2^t) / (1 - beta_1^t) m'
        p  = sqrt(v) + epsilon  (before: p_old, 0 on a row's first update;
                                 after: p_new)
        lin' = lin + a - (p_new - p_old) x
        s  = clip(lin', -eta l1, eta l1) - lin'
        x' = 0                                       if ||s|| <= eta l21 sqrt(d)
             s (1 - eta l21 sqrt(d) / ||s||) / (p_new + 2 eta l2)   otherwise

    With `l1 = l21 = l2 = 0` this is `keras.optimizers.Adam` step for step.
    Sparse gradients update only the rows they name (`lazy=True`), with bias
    correction by the global step, like TensorFlow's LazyAdam.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.001`.
        beta_1: The exponential decay rate of the first moment. Defaults to
            `0.9`.
        beta_2: The exponential decay rate of the second moment. Defaults to
            `0.999`.
        epsilon: "Epsilon hat" of Kingma and Ba, added to `sqrt(v)`. Defaults
            to `1e-7`.
        amsgrad: Boolean; `True` makes this `GroupAMSGrad`. Defaults to
            `False`.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.ADAM
    _rule_variants = {"amsgrad": rules.AMSGRAD}

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        name="group_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._set_rule_hyper(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad)

    def _rule_hyper(self, dtype):
        return self._adam_moment_hyper(dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }
        )
        return config


GroupAdam.__doc__ = base.fill_docstring(GroupAdam.__doc__)
