"""The optimizers of the family, one file each."""

from group_lasso_tf.optimizers.adagrad import GroupAdagrad
from group_lasso_tf.optimizers.adahessian import GroupAdaHessian
from group_lasso_tf.optimizers.adam import GroupAdam
from group_lasso_tf.optimizers.amsgrad import GroupAMSGrad
from group_lasso_tf.optimizers.base import GroupLassoOptimizer
from group_lasso_tf.optimizers.ftrl import GroupFtrl
from group_lasso_tf.optimizers.momentum import GroupMomentum
from group_lasso_tf.optimizers.rmsprop import GroupRMSprop

__all__ = [
    "GroupAdagrad",
    "GroupAdaHessian",
    "GroupAdam",
    "GroupAMSGrad",
    "GroupFtrl",
    "GroupLassoOptimizer",
    "GroupMomentum",
    "GroupRMSprop",
]
