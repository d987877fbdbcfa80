"""Group AdaHessian: AdaHessian with the sparse group lasso (Yue et al., 2021)."""

import numbers
import random
import threading

import keras
import tensorflow as tf

from group_lasso_tf import rows as _rows
from group_lasso_tf import rules
from group_lasso_tf.optimizers import base


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class GroupAdaHessian(base.GroupLassoOptimizer):
    """AdaHessian with sparse-group-lasso regularization (Yao et al., 2021).

    Adam whose second moment averages the square of `D`, a Hutchinson
    estimate of the Hessian diagonal of the loss, instead of `g^2`. Per row of
    `d` elements, at step `t` with learning rate `eta` and Hessian power `k`:

        m' = m + (1 - beta_1) (g - m);   v' = v + (1 - beta_2) (D^2 - v)
        a  = eta (1 - beta_2^t)^(k/2) / (1 - beta_1^t) m'
        p  = v^(k/2) + epsilon  (before: p_old, 0 on a row's first update;
                                 after: p_new)
        lin' = lin + a - (p_new - p_old) x
        s  = clip(lin', -eta l1, eta l1) - lin'
        x' = 0                                       if ||s|| <= eta l21 sqrt(d)
             s (1 - eta l21 sqrt(d) / ||s||) / (p_new + 2 eta l2)   otherwise

    With `l1 = l21 = l2 = 0` this is AdaHessian in its epsilon-hat form,
    `x' = x - eta (1 - beta_2^t)^(k/2) / (1 - beta_1^t) m' / (v'^(k/2) + eps)`
    (no spatial averaging: rows of embeddings and `Dense` kernels have none).

    `D` does not come from `model.fit`'s gradients: train with
    `group_lasso_tf.hessian.HessianModel` (or the `HessianTrainStep` mixin),
    or in a custom loop pass `hessians=` to `apply()`/`apply_gradients()`,
    e.g. from `group_lasso_tf.hessian.gradients_and_hessians()`. Calling the
    optimizer without them is an error. For an `IndexedSlices` gradient, its
    `D` is an `IndexedSlices` too (rows summed over duplicate ids, like the
    gradient) or a dense tensor of the variable's shape.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.15` (AdaHessian's default).
        beta_1: The exponential decay rate of the first moment. Defaults to
            `0.9`.
        beta_2: The exponential decay rate of the second moment (of `D^2`).
            Defaults to `0.999`.
        epsilon: "Epsilon hat", added to `v^(k/2)`. Defaults to `1e-4`.
        hessian_power: `k` in `[0, 1]`; `1` uses `sqrt(v)` like Adam, smaller
            values interpolate towards SGD with momentum. Defaults to `1.0`.
        n_samples: Rademacher probes averaged per estimate of `D` (each
            costs one Hessian-vector product). Defaults to `1`.
        update_every: Estimate `D` every `update_every` steps (steps where
            `iterations % update_every == 0`) and reuse the last estimate in
            between, read from an extra slot `hessian_estimate`. Rows of an
            embedding that have no estimate yet when they are first touched
            between two estimates use `|g|` (the empirical-Fisher diagonal,
            Adam's choice) instead. Defaults to `1` (every step, no slot).
        seed: Integer seed of the probes (stateless: the probes of a step are
            a function of `seed`, the step and the variable). Defaults to
            `None`, a seed drawn once when the optimizer is created.
        {{group_lasso_keyword_args}}
        {{base_optimizer_keyword_args}}
    """

    _rule = rules.ADAHESSIAN

    def __init__(
        self,
        learning_rate=0.15,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-4,
        hessian_power=1.0,
        n_samples=1,
        update_every=1,
        seed=None,
        name="group_ada_hessian",
        **kwargs,
    ):
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                "GroupAdaHessian does not support `gradient_accumulation_steps`: the "
                "Hessian-diagonal estimates would need accumulating too."
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        if isinstance(hessian_power, bool) or not isinstance(hessian_power, numbers.Real) or not (
            0.0 <= hessian_power <= 1.0
        ):
            raise ValueError(f"`hessian_power` must be a float in [0, 1], got {hessian_power!r}")
        self.hessian_power = float(hessian_power)
        self.n_samples = _check_int("n_samples", n_samples, 1)
        self.update_every = _check_int("update_every", update_every, 1)
        if seed is not None:
            seed = _check_int("seed", seed, 0)
        self.seed = seed
        # keras.utils.set_random_seed() seeds Python's generator too.
        self._probe_seed = seed if seed is not None else random.randrange(2**31 - 1)
        # Estimates handed over by apply(hessians=...) / set_hessians(), per
        # thread: under MirroredStrategy each replica runs its step in its own
        # thread and hands over its own estimates.
        self._pending = threading.local()

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        if self.update_every > 1:
            self._hessian_estimate_slots = self.add_optimizer_variables(
                var_list, "hessian_estimate"
            )

    def get_slot(self, variable, slot_name):
        """The optimizer variable `slot_name` of `variable`: one of
        `_group_slot_names`, or "hessian_estimate" when `update_every > 1`."""
        if slot_name == "hessian_estimate" and self.update_every > 1:
            return self._hessian_estimate_slots[self._get_variable_index(variable)]
        return super().get_slot(variable, slot_name)

    def _rule_hyper(self, dtype):
        return self._adam_moment_hyper(dtype) + [base.hyper_tensor(self.hessian_power, dtype)]

    # ------------------------------------------------------------ estimates
    def estimation_step(self):
        """Boolean tensor: whether this step uses a fresh estimate of `D`."""
        if self.update_every == 1:
            return tf.constant(True)
        return tf.equal(tf.math.floormod(self.iterations, self.update_every), 0)

    def set_hessians(self, hessians, trainable_variables):
        """Hands the estimates `D` for the next `apply()` of this thread over.

        `hessians` is aligned with `trainable_variables`; an entry may be None
        only where the gradient is None too. Used by wrappers that call the
        plain `apply()` (e.g. `keras.optimizers.LossScaleOptimizer`).
        """
        hessians = list(hessians)
        trainable_variables = list(trainable_variables)
        if len(hessians) != len(trainable_variables):
            raise ValueError(
                f"`hessians` must hold one entry per variable: got {len(hessians)} "
                f"for {len(trainable_variables)} variables"
            )
        # Checked with the gradients in apply() (check_numerics).
        self._pending.checks = (
            self._check_finite(hessians, trainable_variables, "Hessian estimate")
            if self.check_numerics else [])
        self._pending.hessians = {
            self._var_key(v): h for h, v in zip(hessians, trainable_variables)
        }

    def apply(self, grads, trainable_variables=None, hessians=None):
        """Like `keras.optimizers.Optimizer.apply`, with the estimates `D`.

        Args:
            grads: the gradients, as for Keras.
            trainable_variables: the variables, as for Keras.
            hessians: one Hessian-diagonal estimate per variable (same
                structure as its gradient), or None if `set_hessians()` was
                called before.
        """
        if hessians is not None:
            variables = trainable_variables
            if variables is None:
                variables = self._trainable_variables
            self.set_hessians(hessians, variables)
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._pending.hessians = None
            self._pending.checks = []

    @property
    def _pending_checks(self):
        return getattr(self._pending, "checks", [])

    def apply_gradients(self, grads_and_vars, hessians=None):
        grads, trainable_variables = zip(*grads_and_vars)
        self.apply(grads, trainable_variables, hessians=hessians)
        return self._iterations

    def _take_hessians(self, trainable_variables, grads):
        pending = getattr(self._pending, "hessians", None)
        if pending is None:
            raise _missing_hessians_error()
        hessians = []
        for g, v in zip(grads, trainable_variables):
            h = pending.get(self._var_key(v))
            if h is None and g is not None:
                raise ValueError(
                    f"`hessians` has no estimate for variable "
                    f"{getattr(v, 'path', v.name)!r}, whose gradient is not None"
                )
            hessians.append(h)
        return hessians

    # --------------------------------------------------------------- update
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras's TensorFlow optimizer all-reduces the gradients here and then
        # updates each variable in cross-replica context. D must travel the
        # same way, summed over replicas like the gradient (the loss is a sum
        # over replicas, so is its Hessian).
        hessians = self._take_hessians(trainable_variables, grads)
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        triples = [
            (g, _align_hessian(g, h), v)
            for g, h, v in zip(grads, hessians, variables)
            if g is not None
        ]
        replica_context = tf.distribute.get_replica_context()
        if replica_context is not None and replica_context.num_replicas_in_sync > 1 and triples:
            packed = [_pack(g, h) for g, h, _ in triples]
            reduced = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, packed)
            triples = [
                _unpack(r, g) + (v,) for r, (g, _, v) in zip(reduced, triples)
            ]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_hessian_update_step,
            self._distribution_strategy,
            triples,
            learning_rate,
        )

    def _distributed_hessian_update_step(self, distribution, triples, learning_rate):
        def update(var, grad, hessian, learning_rate):
            return self._hessian_update_step(grad, hessian, var, learning_rate)

        for grad, hessian, var in triples:
            distribution.extended.update(
                var, update, args=(grad, hessian, learning_rate), group=False
            )

    def update_step(self, gradient, variable, learning_rate):
        # Only reached by callers that bypass _backend_update_step, where D
        # is handed over.
        raise _missing_hessians_error()

    def _hessian_update_step(self, gradient, hessian, variable, learning_rate):
        if self.update_every == 1:
            return self._apply_step(gradient, variable, learning_rate,
                                    base.StepExtras(gradient_like=[hessian]))
        if self._fused() is not None:
            # The fused ...Stored op reads or writes the stored estimate itself.
            store = self.get_slot(variable, "hessian_estimate")
            return self._apply_step(gradient, variable, learning_rate, base.StepExtras(
                gradient_like=[hessian], store=store, after=[self.estimation_step()]))
        hessian, writes = self._estimate_for_step(gradient, hessian, variable)
        with tf.control_dependencies(writes):
            return self._apply_step(gradient, variable, learning_rate,
                                    base.StepExtras(gradient_like=[hessian]))

    def _estimate_for_step(self, gradient, hessian, variable):
        """D for this step, and the write of the `hessian_estimate` slot, in TF
        ops (the tf_step path; the fused ...Stored ops do the same).

        On estimation steps: the fresh estimate, also stored. In between: the
        stored one, or |g| for rows with none yet (all zero). Both are
        computed and one selected with tf.where: cheaper than a tf.cond per
        variable, whose switch and merge nodes cost more than these ops.
        """
        store = base.resource_variable(self.get_slot(variable, "hessian_estimate"),
                                        "hessian_estimate")
        dtype = store.dtype
        estimate = self.estimation_step()

        def stored_or_abs_grad(cached, grad_rows):
            known = tf.reduce_any(tf.not_equal(cached, 0), axis=-1, keepdims=True)
            return tf.where(known, cached, tf.abs(grad_rows))

        if isinstance(gradient, tf.IndexedSlices):
            indices = gradient.indices
            n = tf.shape(indices)[0]
            run, first = _rows.id_runs(indices)

            def rows(t):
                return tf.reshape(tf.cast(t, dtype), [n, -1])

            def sums(t):  # each id's sum, at every one of its positions
                return tf.gather(tf.math.unsorted_segment_sum(rows(t), run, n), run)

            cached = rows(tf.gather(store, indices))
            stored = stored_or_abs_grad(cached, sums(gradient.values))
            # One row per id from the store (the op sums duplicate positions).
            stored = tf.where(first[:, None], stored, tf.zeros_like(stored))
            values = tf.where(estimate, rows(hessian.values), stored)
            # Duplicate positions write identical rows.
            new_rows = tf.where(estimate, sums(hessian.values), cached)
            write = store.scatter_update(
                tf.IndexedSlices(tf.reshape(new_rows, tf.shape(gradient.values)), indices))
            values = tf.reshape(values, tf.shape(gradient.values))
            return tf.IndexedSlices(values, indices, hessian.dense_shape), [write]

        hessian = tf.cast(hessian, dtype)
        cached = store.read_value()
        as_rows = _rows.as_rows
        grad_rows = as_rows(tf.cast(gradient, dtype))
        stored = tf.reshape(stored_or_abs_grad(as_rows(cached), grad_rows), tf.shape(cached))
        write = store.assign(tf.where(estimate, hessian, cached))
        return tf.where(estimate, hessian, stored), [write]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "hessian_power": self.hessian_power,
                "n_samples": self.n_samples,
                "update_every": self.update_every,
                "seed": self.seed,
            }
        )
        return config


def _missing_hessians_error():
    return ValueError(
        "GroupAdaHessian needs the Hessian-diagonal estimates D of the loss, "
        "which `model.fit` does not compute: train a "
        "`group_lasso_tf.hessian.HessianModel` (or a model with the "
        "`HessianTrainStep` mixin), or pass `hessians=` to `apply()` "
        "(see `group_lasso_tf.hessian.gradients_and_hessians`)."
    )


def _align_hessian(gradient, hessian):
    """D in the layout of `gradient`: dense for a dense gradient; for an
    `IndexedSlices` gradient, an `IndexedSlices` with the gradient's very
    indices, holding each id's D once (the op sums duplicate positions)."""
    if hessian is None or gradient is None:
        return hessian
    if not isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(hessian)
    if isinstance(hessian, tf.IndexedSlices) and hessian.indices is gradient.indices:
        return hessian
    if isinstance(hessian, tf.IndexedSlices):
        values = _rows.rows_at(hessian.values, hessian.indices, gradient.indices)
    else:
        first = _rows.first_positions(gradient.indices)
        gathered = tf.gather(tf.convert_to_tensor(hessian), gradient.indices)
        mask = tf.reshape(first, [-1] + [1] * (gathered.shape.rank - 1))
        values = tf.where(mask, gathered, tf.zeros_like(gathered))
    return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)


def _pack(gradient, hessian):
    """Gradient and D as one value for a single all-reduce: an IndexedSlices
    pair shares its indices, so its values are concatenated along a new last
    axis (an all-gather keeps them aligned); dense pairs are stacked."""
    if isinstance(gradient, tf.IndexedSlices):
        values = tf.stack([gradient.values, tf.cast(hessian.values, gradient.values.dtype)], -1)
        shape = tf.concat([tf.cast(gradient.dense_shape, tf.int64), [2]], 0) if (
            gradient.dense_shape is not None) else None
        return tf.IndexedSlices(values, gradient.indices, shape)
    return tf.stack([gradient, tf.cast(hessian, gradient.dtype)], -1)


def _unpack(packed, like):
    if isinstance(packed, tf.IndexedSlices):
        shape = like.dense_shape
        return (
            tf.IndexedSlices(packed.values[..., 0], packed.indices, shape),
            tf.IndexedSlices(packed.values[..., 1], packed.indices, shape),
        )
    return packed[..., 0], packed[..., 1]


GroupAdaHessian.__doc__ = base.fill_docstring(GroupAdaHessian.__doc__)
