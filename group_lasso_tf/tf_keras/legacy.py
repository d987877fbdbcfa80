"""The group optimizers on tf_keras's legacy base, `tf_keras.optimizers.legacy.Optimizer`.

OptimizerV2, the base of TF Recommenders-Addons', SOK's and tfmot-era code:
slots made by `add_slot`, per-variable `_resource_apply_dense` /
`_resource_apply_sparse`, `decay` for time-based learning-rate decay. Sparse
gradients go to the fused ops with their duplicate ids (the ops sum them), not
through OptimizerV2's deduplication.
"""

import tensorflow as tf
import tf_keras
from tf_keras.src.optimizers.legacy import optimizer_v2

from group_lasso_tf.optimizers import base
from group_lasso_tf.tf_keras import _common


class GroupLassoOptimizer(_common.TfKerasGroupMixin, tf_keras.optimizers.legacy.Optimizer):
    """Base of the group optimizers on `tf_keras.optimizers.legacy.Optimizer`."""

    _HAS_AGGREGATE_GRAD = True

    def __init__(self, learning_rate=None, name=None, **kwargs):
        rule, group, kwargs = self._split_kwargs(kwargs)
        if learning_rate is None:
            learning_rate = self._rule_defaults["learning_rate"]
        super().__init__(name or self._rule_defaults["name"], **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._init_rule(rule, group)

    def _var_key(self, variable):
        return optimizer_v2._var_key(variable)

    def _create_slots(self, var_list):
        base.check_variable_dtypes(self, var_list)
        for v in var_list:
            for name in self._group_slot_names:
                self.add_slot(v, name, initializer=tf.constant_initializer(
                    self._slot_initial_value(name)))
        self._build_strengths(var_list)

    def _new_strength_variable(self, variable, name, value):
        return self.add_weight(self._strength_variable_name(name), shape=(), dtype=tf.float64,
                               initializer=tf.constant_initializer(value), trainable=False)

    def _resource_apply_dense(self, grad, var, apply_state=None):
        return self._apply_step(grad, var, self._decayed_lr(var.dtype.base_dtype))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        slices = tf.IndexedSlices(grad, indices, tf.shape(var, out_type=indices.dtype))
        return self._apply_step(slices, var, self._decayed_lr(var.dtype.base_dtype))

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices, **kwargs):
        # The fused ops sum duplicate ids themselves, in order.
        return self._resource_apply_sparse(grad, handle, indices, **kwargs)

    def _reanchor(self, variables, learning_rate=None):
        if learning_rate is None:
            learning_rate = self._decayed_lr(tf.float32)
        super()._reanchor(variables, learning_rate)

    def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
        parent = super().apply_gradients
        grads_and_vars = list(grads_and_vars)
        return self._checked_apply(
            lambda: parent(grads_and_vars, name=name,
                           experimental_aggregate_gradients=experimental_aggregate_gradients),
            [g for g, _ in grads_and_vars], [v for _, v in grads_and_vars])

    def get_config(self):
        config = super().get_config()
        config["learning_rate"] = self._serialize_hyperparameter("learning_rate")
        config["decay"] = self._initial_decay
        config.update(self._group_config())
        return config


_RULE_CLASSES = _common.rule_classes(GroupLassoOptimizer, __name__, "group_lasso_tf.legacy")
globals().update(_RULE_CLASSES)

__all__ = sorted(_RULE_CLASSES) + ["GroupLassoOptimizer"]
