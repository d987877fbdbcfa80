"""The group optimizers for tf_keras (Keras 2, `TF_USE_LEGACY_KERAS=1`).

    import group_lasso_tf.tf_keras as gl_tfk
    model.compile(optimizer=gl_tfk.GroupAdam(learning_rate=1e-3, l21=1e-4), ...)

Every optimizer of the package but `GroupAdaHessian` (`GroupAdam`,
`GroupAMSGrad`, `GroupAdagrad`, `GroupMomentum`, `GroupFtrl`, ...) is here,
built on `tf_keras.optimizers.Optimizer` (the default optimizer of
tf_keras 2.11+); `group_lasso_tf.tf_keras.legacy` has the same on
`tf_keras.optimizers.legacy.Optimizer` (OptimizerV2, what TF Recommenders-
Addons, SOK and tfmot-era code use). Same math, the same fused ops and the
same arguments as the Keras 3 classes; the rule's own hyperparameters
(`beta_1`, `momentum`, ...) are keyword arguments. `GroupAdaHessian` is Keras 3
only.
"""

import tensorflow as tf
import tf_keras

from group_lasso_tf.optimizers import base
from group_lasso_tf.tf_keras import _common


class GroupLassoOptimizer(_common.TfKerasGroupMixin, tf_keras.optimizers.Optimizer):
    """Base of the group optimizers on `tf_keras.optimizers.Optimizer`."""

    def __init__(self, learning_rate=None, name=None, **kwargs):
        rule, group, kwargs = self._split_kwargs(kwargs)
        if learning_rate is None:
            learning_rate = self._rule_defaults["learning_rate"]
        super().__init__(name=name or self._rule_defaults["name"], **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self._init_rule(rule, group)

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_group_built", False):
            return
        self._group_built = True
        base.check_variable_dtypes(self, var_list)
        self._slots = {
            name: [
                self.add_variable_from_reference(
                    v, name, initial_value=self._slot_initial_tensor(v, name))
                for v in var_list
            ]
            for name in self._group_slot_names
        }
        self._build_strengths(var_list)

    def _new_strength_variable(self, variable, name, value):
        return self.add_variable(shape=(), dtype=tf.float64,
                                 initializer=tf_keras.initializers.Constant(value),
                                 name=self._strength_variable_name(name))

    def get_slot(self, variable, slot_name):
        """The optimizer variable `slot_name` (one of `_group_slot_names`) of `variable`."""
        if slot_name not in self._group_slot_names:
            raise ValueError(f"`slot_name` must be one of {self._group_slot_names}, got {slot_name!r}")
        return self._slots[slot_name][self._index_dict[self._var_key(variable)]]

    def update_step(self, gradient, variable):
        return self._apply_step(gradient, variable, self.learning_rate)

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        parent = super().apply_gradients
        grads_and_vars = list(grads_and_vars)
        return self._checked_apply(
            lambda: parent(grads_and_vars, name=name,
                           skip_gradients_aggregation=skip_gradients_aggregation, **kwargs),
            [g for g, _ in grads_and_vars], [v for _, v in grads_and_vars])

    def _apply_weight_decay(self, variables):
        super()._apply_weight_decay(variables)
        # tf_keras's default weight_decay is 0 (Keras 3's is None): no change, no re-anchoring.
        if self.weight_decay:
            self._reanchor([v for v in variables if self._use_weight_decay(v)])

    def _overwrite_model_variables_with_average_value(self, var_list):
        super()._overwrite_model_variables_with_average_value(var_list)
        self._reanchor(var_list)

    def get_config(self):
        config = super().get_config()
        config["learning_rate"] = self._serialize_hyperparameter(self._learning_rate)
        config.update(self._group_config())
        return config


_RULE_CLASSES = _common.rule_classes(GroupLassoOptimizer, __name__, "group_lasso_tf")
globals().update(_RULE_CLASSES)

from group_lasso_tf.tf_keras import legacy  # noqa: E402

__all__ = sorted(_RULE_CLASSES) + ["GroupLassoOptimizer", "legacy"]
