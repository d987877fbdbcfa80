"""Hessian-diagonal estimates for `GroupAdaHessian`: training support.

AdaHessian (Yao et al., 2021) preconditions with `D`, Hutchinson's
estimate of the diagonal of the Hessian `H` of the loss:

    D = mean over n_samples of  r * (H r),    r Rademacher (entries +-1)

`H r` is a Hessian-vector product, computed by differentiating `g . r`
(`g` the gradient) once more: a second backward pass through the
first one (a nested `tf.GradientTape`). `E[r * (H r)] = diag(H)`.

For an embedding table whose gradient is a `tf.IndexedSlices`, only the rows
the batch touches are probed: `r` is drawn for the touched rows alone, the
same for every position of an id, and `D` comes back as an `IndexedSlices`
on the gradient's indices. The table is never materialized densely.

Three ways to use it:

* `HessianModel(inputs, outputs)`: a functional `keras.Model` whose
  `fit()` computes `D` and hands it to `GroupAdaHessian` (`wrap(model)`
  turns an existing functional model into one, sharing its layers);
* `HessianTrainStep`: the same `train_step` as a mixin for subclassed
  models (`class MyModel(HessianTrainStep, keras.Model)`);
* `gradients_and_hessians(loss_fn, variables, optimizer)` for custom loops,
  followed by `optimizer.apply(grads, variables, hessians=hessians)`.

The number of probes (`n_samples`), the seed and how often `D` is
re-estimated (`update_every`) are arguments of `GroupAdaHessian`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras.src import tree
from keras.src.losses import loss as loss_module

from group_lasso_tf import rows as _rows

# splitmix64 constants (Steele et al., 2014), for per-id probes.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _mix64(x):
    """splitmix64's finalizer on uint64 tensors (wrapping arithmetic)."""
    def xorshift(x, bits):
        return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(bits, tf.uint64)))

    x = xorshift(x, 30) * tf.constant(_MIX1, tf.uint64)
    x = xorshift(x, 27) * tf.constant(_MIX2, tf.uint64)
    return xorshift(x, 31)


def _probe_key(seed, step, sample, variable_index):
    """A uint64 key per (seed, step, sample, variable).

    Integer hashing only (no stateless RNG op, whose XLA kernels draw other
    numbers than the CPU ones), so a step computes the same probes with and
    without `jit_compile`.
    """
    key = tf.constant(0, tf.uint64)
    for part in (seed, step, sample, variable_index):
        part = tf.bitcast(tf.cast(part, tf.int64), tf.uint64)
        key = _mix64(key * tf.constant(_GOLDEN, tf.uint64) + part + tf.constant(_GOLDEN, tf.uint64))
    return key


def row_probes(indices, row_shape, key, dtype):
    """Rademacher probes for the rows named by `indices`, one row per position.

    Each row gets one splitmix64 hash of (key, id) per 64 columns, and column
    j's sign is bit j % 64 of its hash: every position of an id gets the same
    probe row, so the probe is a function of the table row, as Hutchinson's
    estimator needs, with no `tf.unique` (XLA-compatible) and a few
    element-wise ops per entry.
    """
    n = tf.shape(indices)[0]
    if isinstance(row_shape, (list, tuple)):
        width = int(np.prod(row_shape, dtype=np.int64))
    else:
        width = tf.reduce_prod(tf.cast(row_shape, tf.int32))
    chunks = (width + 63) // 64
    ids = tf.bitcast(tf.cast(indices, tf.int64), tf.uint64)
    row_hash = _mix64(tf.bitwise.bitwise_xor(ids, key) + tf.constant(_GOLDEN, tf.uint64))
    if isinstance(chunks, int) and chunks == 1:
        hashes = row_hash[:, None]
    else:
        offsets = tf.cast(tf.range(chunks), tf.uint64) * tf.constant(_GOLDEN, tf.uint64)
        hashes = _mix64(row_hash[:, None] + offsets[None, :])
    cols = tf.range(width)
    words = tf.gather(hashes, cols // 64, axis=1)
    shifts = tf.cast(cols % 64, tf.uint64)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words, shifts[None, :]),
                                  tf.constant(1, tf.uint64))
    signs = 1 - 2 * tf.cast(bits, dtype)
    return tf.reshape(signs, tf.concat([[n], tf.cast(row_shape, tf.int32)], 0))


def probe(gradient, seed, step, sample, variable_index):
    """The Rademacher probe `r` that `gradients_and_hessians` pairs with `gradient`.

    A function of (seed, step, sample, variable_index) and, entry by entry, of
    the row (the id, for an embedding) and the column: a dense gradient of a
    table and an `IndexedSlices` one get the same probe on the same rows.
    Exposed so that an estimate can be reproduced (tests, debugging).

    Returns a tensor shaped like the gradient (its `values` for
    `IndexedSlices`).
    """
    return _probe_with_key(gradient, _probe_key(seed, step, sample, variable_index))


def _row_shape(t):
    """Shape of a row of t: static where known (probes then need no chunking
    logic at run time)."""
    static = t.shape[1:]
    return static.as_list() if static.is_fully_defined() else tf.shape(t)[1:]


def _probe_with_key(gradient, key):
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values
        return row_probes(gradient.indices, _row_shape(values), key, values.dtype)
    gradient = tf.convert_to_tensor(gradient)
    # Rows along axis 0, as everywhere in this package; a scalar is one row.
    rows = tf.reshape(gradient, [1, 1]) if gradient.shape.rank == 0 else gradient
    num_rows = tf.shape(rows)[0]
    r = row_probes(tf.range(num_rows, dtype=tf.int64), _row_shape(rows), key, gradient.dtype)
    return tf.reshape(r, tf.shape(gradient))


def _values(t):
    return t.values if isinstance(t, tf.IndexedSlices) else t


def _diagonal(gradient, probe, product, key):
    """r * (H r) in the layout of `gradient`; a None product counts as zero.

    For an `IndexedSlices` gradient the result is an `IndexedSlices` on the
    gradient's own indices holding each id's value once, at its first
    position (the sparse op sums duplicate positions, like the gradient's).
    """
    if not isinstance(gradient, tf.IndexedSlices):
        if product is None:
            return tf.zeros_like(gradient)
        return probe * tf.cast(tf.convert_to_tensor(product), gradient.dtype)
    values = gradient.values
    if product is None:
        diagonal = tf.zeros_like(values)
    elif isinstance(product, tf.IndexedSlices):
        # The probe is a function of the id, so r * (H r) can be formed at
        # the product's own positions, then summed per id onto the gradient's.
        product_values = tf.cast(product.values, values.dtype)
        r = row_probes(product.indices, _row_shape(product_values), key, values.dtype)
        diagonal = _rows.rows_at(r * product_values, product.indices, gradient.indices)
    else:
        rows = tf.gather(tf.cast(product, values.dtype), gradient.indices) * probe
        first = _rows.first_positions(gradient.indices)
        mask = tf.reshape(first, [-1] + [1] * (rows.shape.rank - 1))
        diagonal = tf.where(mask, rows, tf.zeros_like(rows))
    return tf.IndexedSlices(diagonal, gradient.indices, gradient.dense_shape)


def _zeros_like_diagonal(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            tf.zeros_like(gradient.values), gradient.indices, gradient.dense_shape
        )
    return tf.zeros_like(gradient)


def _find_adahessian(optimizer):
    """The GroupAdaHessian inside `optimizer` (a LossScaleOptimizer wraps one)."""
    from group_lasso_tf.optimizers.adahessian import GroupAdaHessian

    inner = optimizer
    while inner is not None and not isinstance(inner, GroupAdaHessian):
        inner = getattr(inner, "inner_optimizer", None)
    if inner is None:
        raise TypeError(
            "Hessian-diagonal training needs a GroupAdaHessian optimizer (possibly "
            f"wrapped in a LossScaleOptimizer); got {type(optimizer).__name__}"
        )
    return inner


def gradients_and_hessians(loss_fn, variables, optimizer, n_samples=None, seed=None,
                           has_aux=False):
    """The loss, its gradients and Hutchinson Hessian-diagonal estimates.

    Args:
        loss_fn: callable of no arguments returning the scalar loss (or, with
            `has_aux`, a pair `(loss, aux)`, `aux` any nest of tensors). It is
            traced under two nested `tf.GradientTape`s; with `update_every >
            1` it is traced twice, once for steps that estimate (nested tapes)
            and once for steps that reuse the stored estimate (one tape), and
            only one of them runs. Return the loss already scaled
            (`optimizer.scale_loss(loss)`) when using loss scaling: `D` is
            unscaled here by the same factor, and the gradients are unscaled
            by the optimizer, as Keras does.
        variables: the variables to differentiate with respect to.
        optimizer: the `GroupAdaHessian` (or a `LossScaleOptimizer` around
            one) that will apply them; it supplies `n_samples`, the seed and
            the step (probes depend on both), and `update_every` (on steps
            that reuse the stored estimate no Hessian-vector product is
            computed and the returned `D` is zero).
        n_samples: overrides the optimizer's `n_samples`.
        seed: overrides the optimizer's seed.
        has_aux: whether `loss_fn` returns `(loss, aux)`.

    Returns:
        `(loss, grads, hessians)`, or `(loss, aux, grads, hessians)` with
        `has_aux`: `grads` as `tape.gradient` returns them (`tf.IndexedSlices`
        for embedding lookups), `hessians` in the same structure (None where
        the gradient is None). Then
        `optimizer.apply(grads, variables, hessians=hessians)`.
    """
    adahessian = _find_adahessian(optimizer)
    n_samples = adahessian.n_samples if n_samples is None else int(n_samples)
    if n_samples < 1:
        raise ValueError(f"`n_samples` must be >= 1, got {n_samples}")
    seed = adahessian._probe_seed if seed is None else int(seed)
    variables = list(variables)

    def call_loss():
        out = loss_fn()
        return out if has_aux else (out, ())

    def with_estimates():
        return _estimate(call_loss, variables, optimizer, adahessian.iterations, n_samples, seed)

    if adahessian.update_every == 1:
        loss, aux, grads, hessians = with_estimates()
    else:
        # Two traces (eagerly, only the branch taken runs); the None pattern
        # of the gradients is the same in both, and tf.cond wants tensors
        # only: carry the non-None ones.
        connected = []

        def estimate_branch():
            loss, aux, grads, hessians = with_estimates()
            connected[:] = [g is not None for g in grads]
            return loss, aux, [g for g in grads if g is not None], [
                h for h in hessians if h is not None]

        def reuse_branch():
            with tf.GradientTape() as tape:
                loss, aux = call_loss()
            grads = tape.gradient(loss, variables)
            connected[:] = [g is not None for g in grads]
            grads = [g for g in grads if g is not None]
            return loss, aux, grads, [_zeros_like_diagonal(g) for g in grads]

        loss, aux, grads, hessians = tf.cond(
            adahessian.estimation_step(), estimate_branch, reuse_branch)
        grads, hessians = iter(grads), iter(hessians)
        grads_out, hessians_out = [], []
        for has_grad in connected:
            g = next(grads) if has_grad else None
            h = next(hessians) if has_grad else None
            if isinstance(g, tf.IndexedSlices):
                # Both branches lay D on the gradient's indices; give it the
                # very same indices tensor again (cond outputs are distinct
                # tensors), so the optimizer need not re-align them.
                h = tf.IndexedSlices(h.values, g.indices, g.dense_shape)
            grads_out.append(g)
            hessians_out.append(h)
        grads, hessians = grads_out, hessians_out
    if has_aux:
        return loss, aux, grads, hessians
    return loss, grads, hessians


def _estimate(call_loss, variables, optimizer, step, n_samples, seed):
    """Forward pass, gradients and D (see gradients_and_hessians)."""
    with tf.GradientTape(persistent=n_samples > 1) as outer:
        with tf.GradientTape() as inner:
            loss, aux = call_loss()
        grads = inner.gradient(loss, variables)
        # g . r in the widest floating dtype among the gradients.
        wide = tf.float64 if any(
            g is not None and _values(g).dtype == tf.float64 for g in grads) else tf.float32
        probes, dots, keys = [], [], []
        for k in range(n_samples):
            sample_probes, sample_keys, terms = [], [], []
            for i, g in enumerate(grads):
                if g is None:
                    sample_probes.append(None)
                    sample_keys.append(None)
                    continue
                key = _probe_key(seed, step, k, i)
                r = _probe_with_key(g, key)
                terms.append(tf.reduce_sum(tf.cast(_values(g) * r, wide)))
                sample_probes.append(r)
                sample_keys.append(key)
            probes.append(sample_probes)
            keys.append(sample_keys)
            dots.append(tf.add_n(terms) if terms else None)
    total = None
    for k in range(n_samples):
        if dots[k] is None:
            products = [None] * len(variables)
        else:
            products = outer.gradient(
                dots[k], variables, unconnected_gradients=tf.UnconnectedGradients.NONE
            )
        sample = [
            None if g is None else _diagonal(g, probes[k][i], products[i], keys[k][i])
            for i, g in enumerate(grads)
        ]
        total = sample if total is None else [
            None if a is None else _add(a, b) for a, b in zip(total, sample)
        ]
    # Loss scaling scales H like the gradient: undo it (and average).
    divisor = adahessian_scale(optimizer) * n_samples
    hessians = [None if d is None else _divide(d, divisor) for d in total]
    return loss, aux, grads, hessians


def adahessian_scale(optimizer):
    """The factor `optimizer.scale_loss` multiplies the loss by (1 if none)."""
    return optimizer.scale_loss(tf.constant(1.0, tf.float32))


def _add(a, b):
    if isinstance(a, tf.IndexedSlices):
        # Same indices: every sample is laid out on the gradient's indices.
        return tf.IndexedSlices(a.values + b.values, a.indices, a.dense_shape)
    return a + b


def _divide(d, divisor):
    if isinstance(d, tf.IndexedSlices):
        values = d.values / tf.cast(divisor, d.values.dtype)
        return tf.IndexedSlices(values, d.indices, d.dense_shape)
    return d / tf.cast(divisor, d.dtype)


class HessianTrainStep:
    """Mixin: a `train_step` that feeds Hessian-diagonal estimates to the optimizer.

    Mix it into a `keras.Model` subclass in front of `keras.Model`:

        class MyModel(group_lasso_tf.hessian.HessianTrainStep, keras.Model):
            ...

    `fit()` is then unchanged for the user; the model must be compiled with
    `GroupAdaHessian` (possibly inside a `LossScaleOptimizer`). The step is
    Keras's own (forward pass, loss, loss tracker, loss scaling, metrics)
    with the gradients computed by `gradients_and_hessians`.
    """

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

        def loss_fn():
            if self._call_has_training_arg:
                y_pred = self(x, training=True)
            else:
                y_pred = self(x)
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            self._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(next(i for i in tree.flatten(x) if i is not None))[0],
            )
            return self.optimizer.scale_loss(loss), y_pred

        variables = self.trainable_weights
        if not variables:
            raise ValueError("The model has no trainable weights to train with GroupAdaHessian.")
        _, y_pred, grads, hessians = gradients_and_hessians(
            loss_fn, variables, self.optimizer, has_aux=True)
        _find_adahessian(self.optimizer).set_hessians(hessians, variables)
        self.optimizer.apply(grads, variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class HessianModel(HessianTrainStep, keras.Model):
    """A `keras.Model` whose `fit()` trains with `GroupAdaHessian`.

    Built like any functional model, `HessianModel(inputs, outputs)`, or
    from an existing functional model with `wrap(model)`.
    """


def wrap(model):
    """A `HessianModel` sharing the layers (and weights) of functional `model`."""
    if not hasattr(model, "inputs") or model.inputs is None:
        raise TypeError(
            "wrap() needs a functional model (built from keras.Input); for a "
            "subclassed model, mix in HessianTrainStep instead"
        )
    return HessianModel(inputs=model.inputs, outputs=model.outputs, name=model.name)
