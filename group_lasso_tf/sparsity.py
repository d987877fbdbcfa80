"""Row sparsity of a model's variables, and a Keras callback that logs it.

A row is a slice along axis 0 (an embedding row = a feature id, a `Dense`
kernel row = an input unit); it is *zero* when all its elements are exactly 0.
Under lazy updates an embedding row that training never touched keeps its
initial values: when the optimizer is given, such rows (their linear slot is
all zero and the row is not) are counted separately as `never_trained`.

`SparsityTarget` steers a group optimizer's `l21` during training so that
the row sparsity of the embedding tables reaches a requested fraction.
"""

import dataclasses
import math
import numbers
import re

import keras
import numpy as np
import tensorflow as tf

from group_lasso_tf import pruning


@dataclasses.dataclass
class RowSparsity:
    """Row sparsity of one variable."""

    name: str
    rows: int
    zero_rows: int
    zero_params: int
    params: int
    never_trained_rows: int = 0

    @property
    def sparsity(self):
        """Fraction of rows that are exactly zero."""
        return self.zero_rows / self.rows if self.rows else 0.0


def _rows(array):
    array = np.asarray(array)
    return array.reshape(array.shape[0] if array.ndim else 1, -1)


def row_sparsity(variable, optimizer=None, name=None):
    """`RowSparsity` of one variable (rank >= 1); `optimizer` adds never-trained rows."""
    x = _rows(keras.ops.convert_to_numpy(variable))
    zero = np.all(x == 0, axis=1)
    never = 0
    linear = _linear_slot(optimizer, variable)
    if linear is not None:
        never = int(np.sum(np.all(_rows(linear) == 0, axis=1) & ~zero))
    return RowSparsity(
        name=name or getattr(variable, "path", None) or variable.name,
        rows=x.shape[0],
        zero_rows=int(zero.sum()),
        zero_params=int(np.sum(x == 0)),
        params=int(x.size),
        never_trained_rows=never,
    )


def _linear_slot(optimizer, variable):
    if optimizer is None or "linear" not in getattr(optimizer, "_group_slot_names", ()):
        return None
    try:
        return keras.ops.convert_to_numpy(optimizer.get_slot(variable, "linear"))
    except (KeyError, ValueError):
        return None


def model_sparsity(model, optimizer=None, embeddings_only=False):
    """{variable path: RowSparsity} for the model's trainable variables of rank >= 2."""
    optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    if optimizer is not None and not getattr(optimizer, "built", False):
        optimizer = None
    out = {}
    for layer in model._flatten_layers(include_self=False):
        if embeddings_only and not isinstance(layer, keras.layers.Embedding):
            continue
        for v in layer._trainable_variables:
            if len(v.shape) >= 2:
                out[v.path] = row_sparsity(v, optimizer, v.path)
    return out


def embedding_sparsity(model, optimizer=None):
    """Like `model_sparsity`, for the tables of `keras.layers.Embedding` layers only."""
    return model_sparsity(model, optimizer, embeddings_only=True)


class SparsityLogger(keras.callbacks.Callback):
    """Logs row sparsity at the end of every epoch, into `fit`'s history and TensorBoard.

    For each variable of rank >= 2 (only embedding tables with
    `embeddings_only=True`) it adds `sparsity/<variable path>` (fraction of zero
    rows) and `zero_params/<variable path>` (count of zero elements) to the
    epoch logs, plus `sparsity/embeddings` (zero rows over rows of all
    embedding tables) and, with `log_dir`, writes the same as `tf.summary`
    scalars there.
    """

    def __init__(self, log_dir=None, embeddings_only=False):
        super().__init__()
        self.log_dir = log_dir
        self.embeddings_only = embeddings_only
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        stats = model_sparsity(self.model, embeddings_only=self.embeddings_only)
        tables = embedding_sparsity(self.model)
        values = {f"sparsity/{path}": s.sparsity for path, s in stats.items()}
        values.update({f"zero_params/{path}": s.zero_params for path, s in stats.items()})
        rows = sum(s.rows for s in tables.values())
        if rows:
            values["sparsity/embeddings"] = sum(s.zero_rows for s in tables.values()) / rows
        logs.update(values)
        if self.log_dir:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                for key, value in values.items():
                    tf.summary.scalar(key, value, step=epoch)
            self._writer.flush()


def plot_sparsity(history, path, keys=None):
    """Plots sparsity over epochs per variable (from `SparsityLogger` logs) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = getattr(history, "history", history)
    keys = keys or sorted(k for k in history if k.startswith("sparsity/"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        values = history[key]
        ax.plot(range(1, len(values) + 1), values, label=key[len("sparsity/"):])
    ax.set_xlabel("epoch")
    ax.set_ylabel("row sparsity (fraction of zero rows)")
    ax.set_ylim(0, 1)
    if len(keys) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class SparsityTarget(keras.callbacks.Callback):
    """Steers `l21` during `fit` so that embedding row sparsity reaches `target`.

    Row sparsity as a function of a fixed `l21` is a knife edge (on the Criteo
    sample it jumps from 0% to over 90% within a factor of 3 of `l21`); this
    callback finds the strength while training instead. Every `update_every`
    steps it measures the row sparsity `s` of the steered tables and moves
    their `l21` multiplicatively toward a reference that rises from 0 at
    `begin_step` to `target` at `end_step` and then stays there:

        r(t)   = target * (1 - (1 - (t - begin_step) / (end_step - begin_step))^3)
        e      = r(t) - s(t) - damping * (s(t) - s(t - update_every))
        l21   <- l21 * exp(clip(gain * e, -log(max_factor), +log(max_factor)))

    An integral law on `log(l21)`: the strength keeps rising while sparsity is
    below the reference and falls when above, by at most `max_factor` per
    update. The `damping` term subtracts the sparsity's own rise since the
    last update (rows die over several steps after `l21` crosses their
    threshold), which keeps it from overshooting the knife edge. Steering
    multiplies every steered table's `l21` by the same factor (`per_table=False`,
    keeping the ratios of `per_variable` strengths) or each table's by its
    own from its own sparsity (`per_table=True`).

    The optimizer's `l21` for these tables must be a number (not a schedule);
    where it is 0 the first update sets it to `initial_l21`. The strengths
    are optimizer variables: steering never retraces the train step, and they
    are saved with the optimizer.

    Args:
        target: Row sparsity to reach, in [0, 1).
        tables: Variables (or regular expressions on their paths) to measure
            and steer. Defaults to the tables of all `keras.layers.Embedding`
            layers of the model.
        begin_step: Optimizer step at which steering starts (warm-up before).
            Defaults to the step at which `fit` starts.
        end_step: Optimizer step at which the reference reaches `target`.
            Defaults to 70% of the way through this `fit` call, leaving the
            rest of training to settle at the target.
        update_every: Steps between updates. Defaults to 1/100 of the steps
            of the `fit` call (at least 1).
        gain: Multiplier of the error in the exponent. Defaults to `4.0`.
        damping: Weight of the sparsity's rise since the last update.
            Defaults to `4.0`.
        max_factor: Largest change of `l21` in one update. Defaults to `1.25`.
        initial_l21: `l21` to start from where the optimizer's is 0.
        per_table: Steer each table separately. Defaults to `False`.
        verbose: 1 prints each update.

    After training, `history` holds the steps, references, measured
    sparsities and `l21` values of each update (`l21` of the first steered
    table); `fit`'s epoch logs get `row_sparsity`, `l21` and
    `sparsity_reference`.
    """

    def __init__(self, target, tables=None, begin_step=None, end_step=None, update_every=None,
                 gain=4.0, damping=4.0, max_factor=1.25, initial_l21=None, per_table=False,
                 verbose=0):
        super().__init__()
        if isinstance(target, bool) or not isinstance(target, numbers.Real) \
                or not 0 <= target < 1:
            raise ValueError(f"`target` must be a fraction in [0, 1), got {target!r}")
        for name, value in (("gain", gain), ("damping", damping)):
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {value!r}")
        if not isinstance(max_factor, numbers.Real) or not max_factor > 1:
            raise ValueError(f"`max_factor` must be > 1, got {max_factor!r}")
        if initial_l21 is not None and (not isinstance(initial_l21, numbers.Real)
                                        or not initial_l21 > 0):
            raise ValueError(f"`initial_l21` must be > 0, got {initial_l21!r}")
        if update_every is not None and (not isinstance(update_every, int) or update_every < 1):
            raise ValueError(f"`update_every` must be an int >= 1, got {update_every!r}")
        self.target = float(target)
        self.tables = tables
        self.begin_step = begin_step
        self.end_step = end_step
        self.update_every = update_every
        self.gain = float(gain)
        self.damping = float(damping)
        self.max_factor = float(max_factor)
        self.initial_l21 = initial_l21
        self.per_table = bool(per_table)
        self.verbose = verbose
        self.history = {"step": [], "reference": [], "sparsity": [], "l21": []}

    # ------------------------------------------------------------ set-up
    def _optimizer(self):
        optimizer = self.model.optimizer
        # LossScaleOptimizer (mixed_float16) wraps the group optimizer.
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if not hasattr(optimizer, "strength_variable"):
            raise TypeError(
                "SparsityTarget steers a group_lasso_tf optimizer's l21; the model is compiled "
                f"with {type(optimizer).__name__}")
        return optimizer

    def _steered_tables(self):
        if self.tables is None:
            tables = [layer.embeddings for layer in self.model._flatten_layers(include_self=False)
                      if isinstance(layer, keras.layers.Embedding)]
        else:
            patterns = [t for t in self.tables if isinstance(t, str)]
            objects = [t for t in self.tables if not isinstance(t, str)]
            tables = list(objects) + [
                v for v in self.model.trainable_variables
                if any(re.search(p, v.path) for p in patterns)]
        if not tables:
            raise ValueError("SparsityTarget: no tables to steer (`tables` matched nothing)")
        return tables

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        tables = self._steered_tables()
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._strengths = []
        for table in tables:
            strength = optimizer.strength_variable(table, "l21")
            if strength is None:
                raise ValueError(
                    f"SparsityTarget: the l21 of {table.path!r} is not a number held by the "
                    "optimizer (it is a schedule, or the variable is unregularized)")
            if float(strength.numpy()) == 0.0:
                if self.initial_l21 is None:
                    raise ValueError(
                        f"SparsityTarget: the l21 of {table.path!r} is 0; give the optimizer "
                        "l21 > 0 or SparsityTarget(initial_l21=...)")
                strength.assign(float(self.initial_l21))
            self._strengths.append(strength)
        self._tables = tables
        self._rows = np.array([t.shape[0] for t in tables], np.float64)
        self._units = [[i] for i in range(len(tables))] if self.per_table else [
            list(range(len(tables)))]
        self._previous = None
        start = int(optimizer.iterations.numpy())
        steps = (self.params or {}).get("steps") or 1
        total = steps * ((self.params or {}).get("epochs") or 1)
        self._begin = start if self.begin_step is None else int(self.begin_step)
        self._end = start + int(0.7 * total) if self.end_step is None else int(self.end_step)
        self._end = max(self._end, self._begin + 1)
        self._every = self.update_every or max(1, total // 100)
        self._zero_rows = tf.function(lambda: [
            tf.reduce_sum(tf.cast(tf.reduce_all(tf.equal(
                tf.reshape(t, [tf.shape(t)[0], -1]), 0), axis=1), tf.int64)) for t in tables])

    # ------------------------------------------------------------ control
    def reference(self, step):
        """The sparsity the law steers toward at optimizer step `step`: tfmot's
        cubic schedule from 0 at `begin_step` to `target` at `end_step`."""
        return pruning.polynomial_sparsity(step, 0.0, self.target, self._begin, self._end)

    def measure(self):
        """Fraction of zero rows of each steered unit (all tables, or each table)."""
        zero = np.array([int(z) for z in self._zero_rows()], np.float64)
        return np.array([zero[u].sum() / self._rows[u].sum() for u in self._units])

    def on_train_batch_end(self, batch, logs=None):
        step = int(self._optimizer().iterations.numpy())
        if step < self._begin or (step - self._begin) % self._every:
            return
        sparsity = self.measure()
        reference = self.reference(step)
        rise = 0.0 if self._previous is None else sparsity - self._previous
        self._previous = sparsity
        error = reference - sparsity - self.damping * rise
        limit = math.log(self.max_factor)
        factors = np.exp(np.clip(self.gain * error, -limit, limit))
        for unit, factor in zip(self._units, np.atleast_1d(factors)):
            for i in unit:
                self._strengths[i].assign(self._strengths[i] * float(factor))
        l21 = float(self._strengths[0].numpy())
        overall = float(np.dot(sparsity, [self._rows[u].sum() for u in self._units])
                        / self._rows.sum())
        self.history["step"].append(step)
        self.history["reference"].append(reference)
        self.history["sparsity"].append(overall)
        self.history["l21"].append(l21)
        if self.verbose:
            print(f"SparsityTarget step {step}: sparsity {overall:.3f} "
                  f"(reference {reference:.3f}), l21 -> {l21:.3g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history["step"]:
            logs["row_sparsity"] = float(np.dot(self.measure(), [
                self._rows[u].sum() for u in self._units]) / self._rows.sum())
            logs["l21"] = self.history["l21"][-1]
            logs["sparsity_reference"] = self.history["reference"][-1]
