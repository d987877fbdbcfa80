"""group_lasso_tf: sparse group lasso adaptive optimizers for TensorFlow/Keras.

Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks
in CTR Prediction" (ECML-PKDD 2021). Each optimizer trains a model and zeroes
whole rows of its embedding tables and dense kernels in the same pass.

    model.compile(optimizer=group_lasso_tf.GroupAdam(l1=1e-6, l21=1e-4), ...)
"""

from group_lasso_tf.optimizers import (
    GroupAdagrad,
    GroupAdaHessian,
    GroupAdam,
    GroupAMSGrad,
    GroupFtrl,
    GroupLassoOptimizer,
    GroupMomentum,
    GroupRMSprop,
)
from group_lasso_tf import hessian, layers, pruning, sparsity
from group_lasso_tf.ops import fused_available

__version__ = "0.1.0"

__all__ = [
    "GroupAdagrad",
    "GroupAdaHessian",
    "GroupAdam",
    "GroupAMSGrad",
    "GroupFtrl",
    "GroupLassoOptimizer",
    "GroupMomentum",
    "GroupRMSprop",
    "fused_available",
    "hessian",
    "layers",
    "pruning",
    "sparsity",
]
