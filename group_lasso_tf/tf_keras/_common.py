"""What the tf_keras classes share: the rule of each Keras 3 optimizer, bound
to one of tf_keras's two optimizer bases.

A group optimizer's rule part (`_rule`, `_rule_variants`, `_argument_checks`,
`_rule_hyper`, `_rule_flag` and the rule's own hyperparameters with their defaults) is
declared once, by the Keras 3 class; `make_optimizer` puts it on a tf_keras
base. `_rule_hyper` reads only plain attributes and `_local_step`, which
every base provides.
"""

import inspect

import tensorflow as tf

try:
    import tf_keras
except ImportError as e:  # pragma: no cover - exercised without tf_keras
    raise ImportError(
        "group_lasso_tf.tf_keras needs the `tf_keras` package (Keras 2): "
        "`pip install --no-deps tf-keras==<your TensorFlow version>`"
    ) from e

from group_lasso_tf import optimizers
from group_lasso_tf.optimizers import base

# The Keras 3 optimizers whose tf_keras twins are made: every one of
# `group_lasso_tf.optimizers` but those whose rule reads a Hessian estimate
# (GroupAdaHessian), whose Hessian-vector products need the train step of
# group_lasso_tf.hessian, written for Keras 3.
RULE_CLASSES = tuple(
    cls for cls in (getattr(optimizers, name) for name in optimizers.__all__)
    if issubclass(cls, base.GroupLassoOptimizer) and cls._rule is not None
    and not cls._rule.uses_hessian)

# The constructor arguments every group optimizer takes (GroupLassoOptimizer's).
GROUP_ARGS = ("l1", "l21", "l2", "lazy", "unregularized", "regularize_vectors",
              "use_locking", "check_numerics", "per_variable", "regularize_dense")


def _rule_defaults(keras3_cls):
    """{argument: default} of the rule's own hyperparameters, from the Keras 3
    constructor (learning_rate and name included)."""
    params = inspect.signature(keras3_cls.__init__).parameters
    return {n: p.default for n, p in params.items()
            if p.kind is p.POSITIONAL_OR_KEYWORD and n != "self"}


class TfKerasGroupMixin(base.GroupLassoMixin):
    """Constructor, slots and config of a group optimizer on a tf_keras base."""

    _rule_defaults = {}

    def _split_kwargs(self, kwargs):
        """(rule hyperparameters, group arguments, the base's own kwargs)."""
        rule = {n: kwargs.pop(n, d) for n, d in self._rule_defaults.items()
                if n not in ("learning_rate", "name")}
        group = {n: kwargs.pop(n) for n in GROUP_ARGS if n in kwargs}
        return rule, group, kwargs

    def _init_rule(self, rule, group):
        self._init_group_lasso(**group)
        self._set_rule_hyper(**rule)
        self._rule_config = dict(rule)

    def _serialize_strength(self, spec):
        return tf_keras.saving.serialize_keras_object(spec) if callable(spec) else spec

    @staticmethod
    def _deserialize_strength(value, custom_objects):
        return tf_keras.saving.deserialize_keras_object(value, custom_objects=custom_objects)

    def _strength_variable_name(self, name):
        return f"{name}_strength_{len(self._strength_state)}"

    def _slot_initial_tensor(self, variable, slot_name):
        dtype = getattr(variable, "true_dtype", variable.dtype)
        return tf.fill(variable.shape, tf.constant(self._slot_initial_value(slot_name), dtype))

    def _group_config(self):
        config = dict(self._rule_config)
        config.update(self._group_lasso_config())
        return config


def rule_classes(tf_keras_base, module, package):
    """{name: class} of every class of RULE_CLASSES on `tf_keras_base`."""
    return {cls.__name__: make_optimizer(cls, tf_keras_base, module, package)
            for cls in RULE_CLASSES}


def make_optimizer(keras3_cls, tf_keras_base, module, package):
    """The tf_keras class of `keras3_cls`'s rule on `tf_keras_base`."""
    defaults = _rule_defaults(keras3_cls)
    doc = (
        f"`group_lasso_tf.{keras3_cls.__name__}` for tf_keras (Keras 2), on "
        f"`{tf_keras_base.__module__.replace('.src', '')}.{tf_keras_base.__name__}`.\n\n"
        "    Same math, arguments and defaults as the Keras 3 class (the rule's own\n"
        "    hyperparameters are keyword arguments here); its docstring follows.\n\n    "
        + (keras3_cls.__doc__ or "")
    )
    namespace = {
        "__module__": module,
        "__doc__": doc,
        "_rule": keras3_cls._rule,
        "_rule_variants": keras3_cls._rule_variants,
        "_argument_checks": keras3_cls._argument_checks,
        "_reanchor_outside_changes": keras3_cls._reanchor_outside_changes,
        "_rule_hyper": keras3_cls._rule_hyper,
        "_rule_flag": keras3_cls._rule_flag,
        "_rule_defaults": defaults,
    }
    cls = type(keras3_cls.__name__, (tf_keras_base,), namespace)
    return tf_keras.saving.register_keras_serializable(package=package)(cls)
