"""Group AMSGrad: AMSGrad with the sparse group lasso (Yue et al., 2021)."""

import keras

from group_lasso_tf import rules
from group_lasso_tf.optimizers import base
from group_lasso_tf.optimizers.adam import GroupAdam


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupAMSGrad(GroupAdam):
    """AMSGrad with sparse-group-lasso regularization.

    Group Adam (see `GroupAdam`, same arguments) with the preconditioner
    `p = sqrt(vhat) + epsilon`, where `vhat' = max(vhat, v')` is the running
    maximum of the second moment. With `l1 = l21 = l2 = 0` this is
    `keras.optimizers.Adam(amsgrad=True)` step for step.

    Args:
        learning_rate: A float, a schedule or a callable. Defaults to `0.001`.
        beta_1: First-moment decay. Defaults to `0.9`.
        beta_2: Second-moment decay. Defaults to `0.999`.
        epsilon: Epsilon hat. Defaults to `1e-7`.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.AMSGRAD

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name="group_amsgrad", **kwargs):
        kwargs.pop("amsgrad", None)
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=True, name=name, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        return config


GroupAMSGrad.__doc__ = base.fill_docstring(GroupAMSGrad.__doc__)
