"""Shared Keras plumbing of the group-lasso optimizers.

Each optimizer is a `keras.optimizers.Optimizer` whose `update_step` makes
one call: the fused C++ op of its rule (dense, or sparse for
`tf.IndexedSlices`), or `group_lasso_tf.tf_step` inside XLA or without the
op library. Subclasses declare their rule (an entry of `rules.py`, which
names the slots, the op inputs and the attribute) and map their own
arguments to the rule's hyperparameters; strengths and which variables get
them live in `strengths.py`; slot creation, dispatch and config here.
"""

import dataclasses
import numbers
import re
import warnings
import weakref
from typing import Optional, Sequence

import keras
import tensorflow as tf
from tensorflow.python.framework import auto_control_deps as _acd
from tensorflow.python.ops import control_flow_util
from tensorflow.python.saved_model import save_context as _save_context

from group_lasso_tf import ops as _ops
from group_lasso_tf import reanchor, tf_step
from group_lasso_tf.layers import dynamic_index
from group_lasso_tf.optimizers.strengths import (  # noqa: F401 (re-exported)
    STRENGTH_NAMES, PackedStrength, StrengthsMixin, check_strength)
from group_lasso_tf.rows import as_rows

_SUPPORTED_DTYPES = (tf.float32, tf.float64)

base_group_lasso_keyword_args = """l1: The L1 strength (element-wise sparsity), >= 0. Defaults to `0.0`.
            Each strength is a float, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            taking the optimizer's step (`iterations`) and returning the
            value, e.g. 0 during a warm-up, then a ramp. Numbers are held in
            optimizer variables (per regularized variable, see
            `set_strength`), so changing them never retraces the train step.
        l21: The group-lasso strength, >= 0: each row of a regularized
            variable (an embedding row, the outgoing weights of one input
            unit of a `Dense` kernel) is penalized by
            `l21 * sqrt(d) * ||row||_2` and can become exactly zero.
            Defaults to `0.0`.
        l2: The ridge strength (penalty `l2 * ||x||^2`), >= 0. Defaults to
            `0.0`.
        per_variable: Optional strengths per variable: a dict mapping a
            regular expression (searched in the variable's path or name) to a
            dict of some of `l1`, `l21`, `l2`, or a list of such
            `(pattern or variable, dict)` pairs. The first entry matching a
            variable overrides the strengths it names; unmatched variables
            and unnamed strengths use `l1`, `l21`, `l2`.
        lazy: Boolean. If `True` (default), a `tf.IndexedSlices` gradient
            (an embedding's) updates only the rows it names, their slots
            included; other rows' moments do not decay. If `False`, sparse
            gradients are densified (Keras's own semantics).
        unregularized: Optional list of regular expressions; variables whose
            path or name matches one (`re.search`) get the plain update (all
            strengths zero). See also `exclude_from_regularization()`.
        regularize_vectors: Boolean. Variables of rank 0 and 1 (biases,
            scalars) get the plain update unless this is `True`, in which case
            each of their elements is its own group. Defaults to `False`.
        regularize_dense: Boolean. If `False` (default), variables of rank
            >= 2 whose gradients are dense tensors (the kernels of `Dense`
            layers; embedding tables get `tf.IndexedSlices`) get the plain
            update unless a `per_variable` entry names them: their own
            strengths. If `True`, they get `l1`, `l21`, `l2` like the tables
            (the paper's setting). Measured in docs/sparsity.md#dense-layers:
            one `l21` for both zeroes the inputs of the first `Dense` layer
            at strengths where the tables are still being selected.
        use_locking: Boolean. If `True` (default), an update holds the
            variable's lock exclusively, so concurrent updates of one table
            (parameter servers, several workers) are serialized.
        check_numerics: Boolean. If `True`, a step whose gradients (or
            Hessian estimates) hold a NaN or an Inf fails with
            `InvalidArgumentError` naming the variable, before any variable,
            slot or the step counter is written. If `False` (default), such
            values propagate into the rows they touch (those rows and their
            slots become NaN), as with Keras's optimizers; a
            `LossScaleOptimizer` skips such steps instead."""


def _check_accumulator(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}")
    return value


def _check_power(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value > 0:
        raise ValueError(f"`{name}` must be <= 0, got {value!r}")
    return value


def check_unit_float(name, value):
    """A float in [0, 1] (Keras's SGD checks its `momentum` so)."""
    if not isinstance(value, float) or value < 0 or value > 1:
        raise ValueError(f"`{name}` must be a float in [0, 1], got {value!r}")
    return value


# Checks of the rules' own arguments, by name (the others, such as beta_1 or
# epsilon, may also be callables or tensors, as Keras allows); an optimizer
# adds its own in `_argument_checks`.
_RULE_HYPER_CHECKS = {
    "initial_accumulator_value": _check_accumulator,
    "learning_rate_power": _check_power,
    "momentum": check_unit_float,
    "l2_shrinkage": check_strength,
    "beta": check_strength,
}


def hyper_tensor(value, dtype):
    """A hyperparameter as a scalar tensor of `dtype`.

    Python numbers are converted directly to `dtype` (0.9 stays 0.9 in
    float64; `tf.cast(0.9, tf.float64)` would round it through float32
    first). Callables are called, as Keras allows for hyperparameters.
    """
    if callable(value):
        value = value()
    if isinstance(value, numbers.Real):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


# A variable with dense gradients (a Dense kernel) with at least this fraction
# of its rows zero gets a warning (`GroupLassoMixin._watch_dead_rows`).
DEAD_ROW_FRACTION = 0.9


def dead_rows_message(path, fraction):
    return (
        f"group_lasso_tf: {fraction:.0%} of the rows of {path!r} are exactly zero: the group "
        "lasso has removed nearly all the inputs of this layer, so it (and the network after "
        "it) may be dead. Give it a smaller l21 (per_variable={" + repr(path) + ": {'l21': "
        "...}}) or leave it out of the group term (unregularized=[" + repr(path) + "]); "
        "docs/sparsity.md#dense-layers.")


def _remote_workers():
    """True under ParameterServerStrategy, whose steps run in other processes."""
    return tf.distribute.has_strategy() and isinstance(
        tf.distribute.get_strategy(), tf.distribute.experimental.ParameterServerStrategy)


def in_xla_context():
    """True while tracing inside an XLA cluster (jit_compile=True), where
    custom ops cannot run."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def resource_variable(variable, what):
    """The tf.Variable behind a Keras variable, checked to be resource-backed."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    handle = getattr(variable, "handle", None)
    if handle is None or getattr(handle, "dtype", None) != tf.resource:
        raise TypeError(
            f"{what} must be a resource variable (tf.Variable / keras.Variable); "
            f"got {type(variable).__name__}. Reference (non-resource) variables of "
            "TF1 graphs cannot be updated in place."
        )
    return variable


def check_variable_dtypes(optimizer, var_list):
    """A TypeError naming the variable unless every one is float32 or float64."""
    for v in var_list:
        if tf.as_dtype(v.dtype) not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"{type(optimizer).__name__} supports float32 and float64 variables; "
                f"variable {getattr(v, 'path', v.name)!r} has dtype {v.dtype}. "
                "With mixed precision, keep variables in float32 "
                "(keras.mixed_precision policies such as 'mixed_float16' do)."
            )


# Graph -> {name of a multi-table op: the eager handles of the slots it was
# given stacked}, for _stacked_slots_resolver.
_STACKED_SLOT_USERS = weakref.WeakKeyDictionary()


def _stacked_slot_handles(optimizer, slot_lists):
    """The multi-table op's `slots` input: a [slots per table, tables] tensor
    of the slots' resource handles (slot k of table t at [k, t]), and the
    handles in a list. Made eagerly, outside the step being traced, and kept
    per set of slots: the step then captures one tensor, not one handle per
    slot, and a compiled step pays about 1.6 us per call for every captured
    variable (docs/benchmarks.md, issue 17)."""
    num_slots = len(slot_lists[0])

    def stack(handles):
        # Not tf.stack: TensorFlow's Pack has no GPU kernel for handles.
        return _ops.fused_ops().group_lasso_stack_handles(handles, rows=num_slots)

    if _save_context.in_save_context():
        # tf.saved_model.save traces the step to export it, and an exported
        # function may capture variables but not a bare tensor of handles:
        # stack the captured handles inside it (one op, one capture per slot).
        with tf.init_scope():
            eager = [slot.handle for slots in slot_lists for slot in slots]
        return stack([slots[k].handle for k in range(num_slots) for slots in slot_lists]), eager
    key = tuple(id(slot) for slots in slot_lists for slot in slots)
    cache = optimizer.__dict__.setdefault("_stacked_slots_cache", {})
    hit = cache.get(key)
    flat = [slot for slots in slot_lists for slot in slots]
    if hit is not None and all(a is b for a, b in zip(hit[0], flat)):
        return hit[1], hit[2]
    with tf.init_scope():
        handles = [slots[k].handle for k in range(num_slots) for slots in slot_lists]
        stacked = stack(handles)
    cache[key] = (flat, stacked, handles)
    return stacked, handles


@_acd.register_acd_resource_resolver
def _stacked_slots_resolver(op, resource_reads, resource_writes):
    """Automatic control dependencies order a function's ops on a variable
    by the variable's handle in that function. The multi-table op reaches
    its slots through a stacked handle tensor, so it tells them which slots
    it writes: those that the function also touches directly (a slot read
    after `apply`) are ordered after it, as with one op per table."""
    del resource_reads
    slots = _STACKED_SLOT_USERS.get(op.graph, {}).get(op.name)
    if not slots:
        return False
    # (A graph that is not a function's has no captures, and no ACD either.)
    internal = {id(external): inside
                for external, inside in getattr(op.graph, "captures", ())}
    added = False
    for handle in slots:
        inside = internal.get(id(handle))
        if inside is not None and inside not in resource_writes:
            resource_writes.add(inside)
            added = True
    return added


def _clear_stale_slots(shard, slots, indices, dtype):
    """Before a sparse update of a `DynamicEmbedding` pool: zeroes the slot
    rows that eviction gave to a new id (only `evict_lru` leaves any)."""
    if shard.on_full != "evict_lru":
        return tf.no_op()
    return _ops.fused_ops().group_lasso_dynamic_clear_stale(
        *shard.index_handles(), [s.handle for s in slots], indices, T=dtype)


def _release_zero_rows(shard, var, slots, indices, dtype):
    """After a sparse update of a `DynamicEmbedding` pool: frees the rows of
    `indices` that it left exactly zero (their ids leave the index)."""
    return _ops.fused_ops().group_lasso_dynamic_release(
        *shard.index_handles(), var.handle, [s.handle for s in slots], indices, T=dtype)


@dataclasses.dataclass
class StepExtras:
    """Inputs of one step beyond the gradient, for rules that take more (the
    hook through which AdaHessian passes its Hessian estimate).

    gradient_like: tensors laid out like the gradient (`IndexedSlices` with
        the gradient's indices for a sparse one), the op inputs after `grad`
        (`hessian`).
    store: a variable-shaped variable after the slots; selects the rule's
        "...Stored" ops (`hessian_estimate`).
    after: scalar inputs after `gradient_like` (`estimate`), with `store`.
    """

    gradient_like: Sequence = ()
    store: Optional[object] = None
    after: Sequence = ()


class GroupLassoMixin(StrengthsMixin):
    """The part of a group optimizer that does not depend on the Keras version.

    The rule's inputs, the call of the fused op (or of `tf_step`),
    re-anchoring and the finite checks; strengths and variable selection come
    from `StrengthsMixin`. `GroupLassoOptimizer` combines it with Keras 3's
    `Optimizer`, `group_lasso_tf.tf_keras` with tf_keras's two bases. The
    host class provides `get_slot(variable, name)`, `iterations`,
    `learning_rate` and `_var_key(variable)`.

    Subclasses set `_rule` (a `rules.Rule`: slots, op inputs, attribute) and
    implement `_rule_hyper(dtype)`, the rule's hyperparameters as tensors in
    `_rule.hyper` order, reading only plain attributes and `_local_step` (so
    the tf_keras classes reuse it); `_rule_flag()` gives the value of the
    rule's op attribute, if it has one. `_rule_variants` maps a boolean
    argument to the rule it selects (GroupAdam's `amsgrad`), and
    `_argument_checks` checks of the class's own arguments by name (applied
    by `_set_rule_hyper`, on every base).
    """

    _rule = None
    _rule_variants = {}
    _argument_checks = {}
    _reanchor_outside_changes = True

    @property
    def _group_slot_names(self):
        """The rule's slots, in op order, the linear slot last."""
        return self._rule.slots

    def _init_group_lasso(self, l1=0.0, l21=0.0, l2=0.0, lazy=True, unregularized=None,
                          regularize_vectors=False, use_locking=True, check_numerics=False,
                          per_variable=None, regularize_dense=False):
        self._init_strengths(l1, l21, l2, per_variable, unregularized, regularize_vectors,
                             regularize_dense)
        self.lazy = bool(lazy)
        self.use_locking = bool(use_locking)
        self.check_numerics = bool(check_numerics)
        self._dead_rows_warned = set()  # paths already warned of (_watch_dead_rows)

    def _serialize_strength(self, spec):
        return keras.saving.serialize_keras_object(spec) if callable(spec) else spec

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Keras's `from_config`, with serialized schedules of the strengths
        turned back into objects first (every base, Keras 3 and tf_keras)."""
        config = dict(config)

        def load(value):
            if isinstance(value, dict):
                return cls._deserialize_strength(value, custom_objects)
            return value

        for name in STRENGTH_NAMES:
            if name in config:
                config[name] = load(config[name])
        if config.get("per_variable"):
            config["per_variable"] = [
                (key, {n: load(v) for n, v in overrides.items()})
                for key, overrides in config["per_variable"]]
        return super().from_config(config, custom_objects=custom_objects)

    @staticmethod
    def _deserialize_strength(value, custom_objects):
        return keras.saving.deserialize_keras_object(value, custom_objects=custom_objects)

    def _group_lasso_config(self):
        for key, _ in self.per_variable:
            if not isinstance(key, str):
                raise ValueError(
                    "get_config: `per_variable` keys that are variables cannot be serialized; "
                    "use regular expressions on their paths")
        return {
            "l1": self._serialize_strength(self.l1),
            "l21": self._serialize_strength(self.l21),
            "l2": self._serialize_strength(self.l2),
            "per_variable": [
                [key, {n: self._serialize_strength(v) for n, v in overrides.items()}]
                for key, overrides in self.per_variable],
            "lazy": self.lazy,
            "unregularized": list(self.unregularized),
            "regularize_vectors": self.regularize_vectors,
            "regularize_dense": self.regularize_dense,
            "use_locking": self.use_locking,
            "check_numerics": self.check_numerics,
        }

    # ----------------------------------------------------------------- rule
    def _set_rule_hyper(self, **values):
        """Checks and sets the rule's own arguments (`beta_1`, `momentum`, ...);
        a true argument of `_rule_variants` (`amsgrad`) switches the rule."""
        for name, value in values.items():
            if name in self._rule_variants:
                value = bool(value)
                if value:
                    self._rule = self._rule_variants[name]
            check = self._argument_checks.get(name, _RULE_HYPER_CHECKS.get(name))
            setattr(self, name, check(name, value) if check else value)

    def _slot_initial_value(self, slot_name):
        """Adagrad's and FTRL's accumulators start at initial_accumulator_value."""
        if slot_name == "accumulator":
            return self.initial_accumulator_value
        return 0.0

    # --------------------------------------------------------------- update
    def _rule_hyper(self, dtype):
        raise NotImplementedError

    def _adam_moment_hyper(self, dtype):
        """beta1^t, beta2^t, beta1, beta2, epsilon: the hyperparameter inputs
        of the Adam-family rules (Adam, AMSGrad, AdaHessian), in op order."""
        beta_1 = hyper_tensor(self.beta_1, dtype)
        beta_2 = hyper_tensor(self.beta_2, dtype)
        step = self._local_step(dtype)
        return [
            tf.pow(beta_1, step),
            tf.pow(beta_2, step),
            beta_1,
            beta_2,
            hyper_tensor(self.epsilon, dtype),
        ]

    def _rule_flag(self):
        """The value of the rule's op attribute (`_rule.flag`)."""
        return False

    def _op_attrs(self):
        return {self._rule.flag: self._rule_flag()} if self._rule.flag else {}

    def _local_step(self, dtype):
        return tf.cast(self.iterations + 1, dtype)

    def _step_inputs(self, variable, learning_rate, strengths=None):
        """The tf.Variable, its slots, and the op's scalar inputs (with
        `strengths`, [l1, l21, l2] already made, those)."""
        var = resource_variable(variable, "variable")
        dtype = var.dtype
        slots = [
            resource_variable(self.get_slot(variable, name), f"slot {name!r}")
            for name in self._group_slot_names
        ]
        shared = getattr(self, "_step_scalars", None)  # a step's, or this variable's own
        shared = {} if shared is None else shared
        if dtype not in shared:
            shared[dtype] = (tf.cast(learning_rate, dtype), self._rule_hyper(dtype))
        lr, hyper = shared[dtype]
        if strengths is None:
            strengths = self._strengths(variable, dtype)
        return var, slots, [lr] + list(strengths), hyper

    def _reanchor(self, variables, learning_rate=None):
        """Re-derives the linear slots of variables changed outside the step.

        The linear slot, not the variable, carries the optimizer's state: a
        change made to the weights by someone else (Keras's weight decay, an
        EMA overwrite, a constraint) would be undone by the next step unless
        the slot is made consistent with the new weights. Optimizers whose
        own Keras counterpart lets such a change act only through the linear
        term (FTRL) set `_reanchor_outside_changes = False`.
        """
        if not self._reanchor_outside_changes:
            return
        if learning_rate is None:
            learning_rate = self.learning_rate
        flag = self._rule_flag()
        for variable in variables:
            var, slots, scalars, hyper = self._step_inputs(variable, learning_rate)
            reanchor.reanchor_dense(self._rule, var, slots, *scalars, hyper, flag)

    def _last_step_learning_rate(self):
        """The learning rate of the step just applied (`iterations` has moved on)."""
        schedule = getattr(self, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return schedule(tf.maximum(self.iterations - 1, 0))
        return self.learning_rate

    def _row_inputs(self, variable):
        """(var, [rows, d] weights, [rows, d] slots, lr, l1, l21, l2, hyper) at the
        strengths and learning rate of the last step."""
        var, slots, scalars, hyper = self._step_inputs(variable, self._last_step_learning_rate())
        rows = [as_rows(t.read_value()) for t in [var] + slots]
        return var, rows[0], rows[1:], scalars, hyper

    def survival_strengths(self, variable):
        """Per row of `variable` (a [rows] tensor): the smallest `l21` at which
        the proximal step of its current linear slot makes the row exactly
        zero (NaN for rows never trained). Row r is zero after
        `shrink_rows` at strength l21 exactly when `survival[r] <= l21`;
        docs/algorithm.md#survival-strengths."""
        var, slots, (lr, l1, l21, l2), hyper = self._step_inputs(
            variable, self._last_step_learning_rate())
        # Only the weights and the linear slot matter: the moments are not read.
        x, linear = (as_rows(t.read_value()) for t in (var, slots[-1]))
        return tf_step.survival_strengths(self._rule, x, linear, lr, l1, l2, hyper)

    def shrink_rows(self, variables):
        """Re-applies the proximal step to every trained row of `variables` at
        their current strengths (from their slots, which do not change).

        Under lazy updates a row keeps the weights of its last update, made
        at the strengths of that step; after the strengths change (as
        `sparsity.SparsityTarget` does), this brings every row to the
        weights the new strengths give it, so that rows not touched since do
        not lag. Rows never trained keep their weights. A `DynamicEmbedding`
        pool then frees the rows it made zero, as its update does."""
        flag = self._rule_flag()
        for variable in variables:
            var, x, slots, (lr, l1, l21, l2), hyper = self._row_inputs(variable)
            shrunk = tf_step.shrink_rows(self._rule, x, slots, lr, l1, l21, l2, hyper, flag)
            write = var.assign(tf.reshape(shrunk, tf.shape(var)))
            shard = dynamic_index(variable)
            if shard is not None:  # a DynamicEmbedding pool frees the rows now zero
                slot_vars = [resource_variable(self.get_slot(variable, n), n)
                             for n in self._group_slot_names]
                with tf.control_dependencies([write]):
                    _release_zero_rows(shard, var, slot_vars,
                                       tf.range(shard.capacity, dtype=tf.int64), var.dtype)

    def _check_finite(self, tensors, variables, what):
        """The checks that `tensors` are finite, each failing with a message
        naming its variable (eagerly: the first failure raises here)."""
        checks = []
        for t, v in zip(tensors, variables):
            if t is None:
                continue
            values = t.values if isinstance(t, tf.IndexedSlices) else t
            name = getattr(v, "path", None) or getattr(v, "name", "?")
            checks.append(tf.debugging.assert_equal(
                tf.reduce_all(tf.math.is_finite(values)), True,
                message=f"check_numerics: the {what} of variable {name!r} has NaN or Inf "
                "values; nothing was updated"))
        return checks

    def _checked_apply(self, apply_fn, grads, variables, extra_checks=()):
        """Runs `apply_fn()` (the base class's apply) after the finite checks
        of `grads` (and `extra_checks`) when `check_numerics` is set, then
        re-anchors the linear slots of constrained variables: Keras applies
        constraints after the update."""
        self._record_gradient_kinds(grads, variables)
        checks = []
        if self.check_numerics:
            checks = self._check_finite(grads, variables, "gradient") + list(extra_checks)
        # In a graph, every write of the step (weight decay, updates, the
        # step counter) waits for all checks.
        with tf.control_dependencies(checks):
            result = apply_fn()
        constrained = [v for g, v in zip(grads, variables)
                       if g is not None and getattr(v, "constraint", None) is not None]
        if constrained:
            self._reanchor(constrained)
        return result

    def _fused(self):
        """The op library, or None where `tf_step` must run (XLA, no library)."""
        return None if in_xla_context() else _ops.fused_ops()

    def _apply_step(self, gradient, variable, learning_rate, extras=None):
        """One fused (or `tf_step`) step of the rule on `variable`.

        `extras` (a `StepExtras`) carries inputs beyond the gradient, for
        rules that take more (AdaHessian's estimate); `extras.store` needs the
        fused ops (the caller handles the `tf_step` path).
        """
        extras = extras or StepExtras()
        var, slots, (lr, l1, l21, l2), hyper = self._step_inputs(variable, learning_rate)
        dtype = var.dtype
        gradient_like = list(extras.gradient_like)
        sparse_gradient = isinstance(gradient, tf.IndexedSlices)
        if sparse_gradient and not self.lazy:
            gradient = tf.convert_to_tensor(gradient)
            gradient_like = [tf.convert_to_tensor(t) for t in gradient_like]
        fused = self._fused()
        flag = self._rule_flag()
        store_handles = []
        if extras.store is not None:
            if fused is None:
                raise ValueError("a stored estimate needs the fused ops")
            store_handles = [resource_variable(extras.store, "store").handle]
        dense_op, sparse_op = self._rule.op_names(stored=extras.store is not None)
        if isinstance(gradient, tf.IndexedSlices):
            values = tf.cast(gradient.values, dtype)
            indices = gradient.indices
            if indices.dtype not in (tf.int32, tf.int64):
                raise TypeError(f"gradient indices must be int32 or int64, got {indices.dtype}")
            extra = [tf.cast(t.values, dtype) for t in gradient_like]
            if fused is None:
                return tf_step.apply_sparse(self._rule, var, slots, values, indices, lr, l1, l21,
                                            l2, hyper, flag, *extra)
            shard = dynamic_index(variable)
            if shard is None:
                return _ops.apply_op(sparse_op)(
                    var.handle, *[s.handle for s in slots], *store_handles, lr, l1, l21, l2,
                    *hyper, values, *extra, *extras.after, indices, use_locking=self.use_locking,
                    **self._op_attrs())
            # A DynamicEmbedding pool (of one shard): stale slots cleared
            # before the update, zeroed rows freed after it.
            with tf.control_dependencies([_clear_stale_slots(shard, slots, indices, dtype)]):
                update = _ops.apply_op(sparse_op)(
                    var.handle, *[s.handle for s in slots], *store_handles, lr, l1, l21, l2,
                    *hyper, values, *extra, *extras.after, indices, use_locking=self.use_locking,
                    **self._op_attrs())
            with tf.control_dependencies([update]):
                return tf.group(_release_zero_rows(shard, var, slots, indices, dtype))
        grad = tf.cast(gradient, dtype)
        extra = [tf.cast(t, dtype) for t in gradient_like]
        if fused is None:
            update = tf_step.apply_dense(self._rule, var, slots, grad, lr, l1, l21, l2, hyper,
                                         flag, *extra)
        else:
            update = _ops.apply_op(dense_op)(
                var.handle, *[s.handle for s in slots], *store_handles, lr, l1, l21, l2, *hyper,
                grad, *extra, *extras.after, use_locking=self.use_locking, **self._op_attrs(),
            )
        if not sparse_gradient:
            self._watch_dead_rows(variable, var, update)
        return update

    def _watch_dead_rows(self, variable, var, update):
        """Warns once when the group lasso has zeroed at least DEAD_ROW_FRACTION
        of the rows of a variable with dense gradients (a `Dense` kernel:
        nearly all its inputs removed, so the layer, and the network after
        it, may be dead). Embedding tables, whose gradients are
        `tf.IndexedSlices`, are meant to be sparse and are not watched.

        The check is a reduction over the variable after its update, in the
        step's graph; the warning itself is Python (`tf.py_function`), so it
        is skipped inside XLA clusters and on remote workers
        (ParameterServerStrategy), where no Python runs."""
        path = re.sub(r":\d+$", "", getattr(variable, "path", None) or variable.name)
        if (len(variable.shape) < 2 or not self._is_regularized(variable)
                or path in self._dead_rows_warned or in_xla_context()
                or _remote_workers()):
            return
        with tf.control_dependencies([update] if update is not None else []):
            rows = as_rows(var.read_value())
        zero = tf.reduce_mean(tf.cast(tf.reduce_all(tf.equal(rows, 0), axis=1), tf.float32))

        def warn(fraction):
            if path not in self._dead_rows_warned:
                self._dead_rows_warned.add(path)
                warnings.warn(dead_rows_message(path, float(fraction)), RuntimeWarning,
                              stacklevel=2)
            return []

        tf.cond(zero >= DEAD_ROW_FRACTION,
                lambda: tf.group(tf.py_function(warn, [zero], [])), tf.no_op)


class GroupLassoOptimizer(GroupLassoMixin, keras.optimizers.Optimizer):
    """Base class of the Keras 3 group optimizers: `GroupLassoMixin` on
    `keras.optimizers.Optimizer`, with its slots as optimizer variables."""

    # The sparse steps of a step's tables in one multi-table op (tests turn
    # it off to compare with one op per table).
    _multi_table_steps = True

    def __init__(
        self,
        learning_rate,
        l1=0.0,
        l21=0.0,
        l2=0.0,
        lazy=True,
        unregularized=None,
        regularize_vectors=False,
        use_locking=True,
        check_numerics=False,
        per_variable=None,
        regularize_dense=False,
        name=None,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._init_group_lasso(l1, l21, l2, lazy, unregularized, regularize_vectors,
                               use_locking, check_numerics, per_variable, regularize_dense)

    def build(self, var_list):
        if self.built:
            return
        check_variable_dtypes(self, var_list)
        super().build(var_list)
        for v in var_list:
            self._regularizable(v)
        for slot_name in self._group_slot_names:
            slots = self.add_optimizer_variables(
                var_list, slot_name,
                initializer=keras.initializers.Constant(self._slot_initial_value(slot_name)),
            )
            setattr(self, "_" + slot_name + "_slots", slots)
        self._build_strengths(var_list)

    def _hold_strengths(self, numbers):
        # All of them in one float64 variable (PackedStrength): one captured
        # input per step instead of one per strength. Its initializer is not
        # keras.initializers.Constant, which rounds a Python float through
        # float32; and not an assign after creation, which Keras's symbolic
        # build (model.fit) would drop.
        if not numbers:
            return []
        values = [value for _, _, value in numbers]

        def exact(shape, dtype):
            return tf.constant(values, dtype=dtype, shape=shape)

        table = self.add_variable(shape=(len(values),), initializer=exact, dtype="float64",
                                  name="strengths")
        return [PackedStrength(table, i) for i in range(len(values))]

    def get_slot(self, variable, slot_name):
        """The optimizer variable `slot_name` (one of `_group_slot_names`) of `variable`."""
        if slot_name not in self._group_slot_names:
            raise ValueError(f"`slot_name` must be one of {self._group_slot_names}, got {slot_name!r}")
        return getattr(self, "_" + slot_name + "_slots")[self._get_variable_index(variable)]

    def _apply_weight_decay(self, variables):
        super()._apply_weight_decay(variables)
        if self.weight_decay is not None:
            self._reanchor([v for v in variables if self._use_weight_decay(v)])

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        super()._overwrite_model_variables_with_average_value(trainable_variables)
        self._reanchor(trainable_variables)

    def apply(self, grads, trainable_variables=None):
        variables = self._trainable_variables if trainable_variables is None else trainable_variables
        parent = super().apply
        return self._checked_apply(lambda: parent(grads, trainable_variables), list(grads),
                                   list(variables), getattr(self, "_pending_checks", []))

    def update_step(self, gradient, variable, learning_rate):
        return self._apply_step(gradient, variable, learning_rate)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        # Keras's TensorFlow optimizer calls update_step once per variable;
        # the sparse steps that can share one multi-table op go together.
        # Without a strategy, the learning rate and the rule's hyperparameters
        # (bias corrections included) are made once per dtype for all the
        # variables of the step, not once per variable: a few hundred fewer
        # small ops per step with tens of tables. Under a strategy each
        # update runs on its variable's device, so each makes its own.
        # (object.__setattr__: a plain attribute, not tracked by Keras or
        # TensorFlow's checkpointing as their __setattr__ would make it.)
        object.__setattr__(self, "_step_scalars",
                           None if tf.distribute.has_strategy() else {})
        try:
            rest = self._apply_multi_table_steps(grads_and_vars, learning_rate)
            return super()._distributed_tf_update_step(distribution, rest, learning_rate)
        finally:
            object.__setattr__(self, "_step_scalars", None)

    def _apply_multi_table_steps(self, grads_and_vars, learning_rate):
        """Applies the lazy sparse steps of the tables of each device (no
        strategy) with one multi-table op per device and dtype pair,
        `DynamicEmbedding` pools with their clearing before and release after
        it; returns the (gradient, variable) pairs left to the per-variable
        path. The op gives every row the step the per-table op gives it; on
        a GPU (a library built with CUDA) it also needs no host
        synchronization, where the per-table op has one per table."""
        fused = self._fused()
        op_name = self._rule.multi_op_name
        if (fused is None or op_name is None or not self.lazy or not self._multi_table_steps
                or tf.distribute.has_strategy()):
            return grads_and_vars
        device_types = ("CPU", "GPU") if _ops.gpu_kernels_built() else ("CPU",)
        groups, rest = {}, []
        for gradient, variable in grads_and_vars:
            # Keras 3 variables carry their device on their resource handle.
            handle = getattr(variable, "handle", None)
            device = tf.DeviceSpec.from_string(getattr(handle, "device", None)
                                               or getattr(variable, "device", None) or "")
            if (isinstance(gradient, tf.IndexedSlices)
                    and (device.device_type or "CPU") in device_types
                    and gradient.indices.dtype in (tf.int32, tf.int64)):
                # One op per device: it runs where its variables are.
                key = (device.to_string(), tf.as_dtype(variable.dtype), gradient.indices.dtype)
                groups.setdefault(key, []).append((gradient, variable))
            else:
                rest.append((gradient, variable))
        for (device, dtype, _), pairs in groups.items():
            # One CPU table has nothing to share; on a GPU the op still
            # saves the per-table op's host synchronization.
            if len(pairs) == 1 and tf.DeviceSpec.from_string(device).device_type != "GPU":
                rest.extend(pairs)
                continue
            strengths = self._strengths_of([v for _, v in pairs], dtype)
            tables = [self._step_inputs(v, learning_rate, s) for (_, v), s in zip(pairs, strengths)]
            lr, hyper = tables[0][2][0], tables[0][3]
            shards = [dynamic_index(v) for _, v in pairs]
            pools = [(shard, var, slots, g.indices)
                     for shard, (g, _), (var, slots, *_) in zip(shards, pairs, tables)
                     if shard is not None]
            slot_handles, handle_list = _stacked_slot_handles(
                self, [slots for _, slots, *_ in tables])
            with tf.control_dependencies([_clear_stale_slots(shard, slots, indices, dtype)
                                          for shard, _, slots, indices in pools]):
                update = _ops.apply_op(op_name)(
                    [var.handle for var, *_ in tables], slot_handles,
                    lr, *[[scalars[k] for _, _, scalars, _ in tables] for k in (1, 2, 3)],
                    *hyper, [tf.cast(g.values, dtype) for g, _ in pairs],
                    [g.indices for g, _ in pairs], use_locking=self.use_locking,
                    table_names=[getattr(v, "path", None) or v.name for _, v in pairs],
                    **self._op_attrs())
            if isinstance(update, tf.Operation):  # building a graph: see the resolver
                _STACKED_SLOT_USERS.setdefault(update.graph, {})[update.name] = handle_list
            with tf.control_dependencies([update]):
                for shard, var, slots, indices in pools:
                    _release_zero_rows(shard, var, slots, indices, dtype)
        return rest

    def get_config(self):
        config = super().get_config()
        config.update(self._group_lasso_config())
        return config


def fill_docstring(doc):
    """Fills the shared argument sections into an optimizer's docstring."""
    if doc is None:
        return doc
    from keras.src.optimizers import optimizer as keras_optimizer

    return doc.replace("{{group_lasso_keyword_args}}", base_group_lasso_keyword_args).replace(
        "{{base_optimizer_keyword_args}}", keras_optimizer.base_optimizer_keyword_args
    )
