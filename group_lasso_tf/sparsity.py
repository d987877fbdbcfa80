"""Row sparsity of a model's variables, and Keras callbacks that log and steer it.

A row is a slice along axis 0 (an embedding row = a feature id, a `Dense`
kernel row = an input unit); it is *zero* when all its elements are exactly 0.

Which rows count: under lazy updates an embedding row that training never
touched (an id absent from the training data) keeps its initial values, and
no strength of the group lasso can act on it. When the trained group
optimizer is known, such rows (their linear slot is all zero and the row is
not) are *never trained*: they are left out of the sparsity, which is
`zero rows / (rows - never-trained rows)`. Without the optimizer every row
counts. `row_sparsity`, `SparsityLogger`, `SparsityTarget`, the export report
and the benchmarks all use this definition (docs/sparsity.md#which-rows-count).

`SparsityTarget` steers a group optimizer's `l21` during training so that
the row sparsity of the embedding tables reaches a requested fraction.
"""

import dataclasses
import functools
import numbers
import re

import keras
import numpy as np
import tensorflow as tf

from group_lasso_tf import pruning
from group_lasso_tf.layers import dynamic_index
from group_lasso_tf.optimizers.strengths import assign_strengths
from group_lasso_tf.rows import as_rows


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
    def counted_rows(self):
        """Rows the sparsity counts: all but the never-trained ones."""
        return self.rows - self.never_trained_rows

    @property
    def sparsity(self):
        """Fraction of the counted rows that are exactly zero."""
        return self.zero_rows / self.counted_rows if self.counted_rows else 0.0


def overall_sparsity(stats):
    """Zero rows over counted rows of several `RowSparsity` (0 when none count)."""
    stats = list(stats.values() if isinstance(stats, dict) else stats)
    counted = sum(s.counted_rows for s in stats)
    return sum(s.zero_rows for s in stats) / counted if counted else 0.0


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
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
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


def dynamic_tables(model):
    """The `layers.DynamicEmbedding` layers of `model` (nested ones included)."""
    from group_lasso_tf.layers import DynamicEmbedding

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, DynamicEmbedding)]


def embedding_sparsity(model, optimizer=None):
    """Like `model_sparsity`, for the tables of `keras.layers.Embedding` layers only."""
    return model_sparsity(model, optimizer, embeddings_only=True)


class SparsityLogger(keras.callbacks.Callback):
    """Logs row sparsity at the end of every epoch, into `fit`'s history and TensorBoard.

    For each variable of rank >= 2 (only embedding tables with
    `embeddings_only=True`) it adds `sparsity/<variable path>` (fraction of zero
    rows) and `zero_params/<variable path>` (count of zero elements) to the
    epoch logs, plus `sparsity/embeddings` (zero rows over counted rows of
    all embedding tables); for each `layers.DynamicEmbedding`,
    `sparsity/<layer name>` (its `sparsity()`: freed over admitted ids) and
    `table/<layer name>/<stat>` for the counters of its `table_stats()`. With
    `log_dir`, it writes the same as `tf.summary` scalars there.
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
        if tables:
            values["sparsity/embeddings"] = overall_sparsity(tables)
        for layer in dynamic_tables(self.model):
            values[f"sparsity/{layer.name}"] = layer.sparsity()
            values.update({f"table/{layer.name}/{k}": v for k, v in layer.table_stats().items()})
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

    Row sparsity as a function of a fixed `l21` is a knife edge, and where
    the edge lies depends on the data, the optimizer, the learning rate and
    the step (at a fixed strength, the linear slot of a zeroed row keeps
    accumulating gradients, so rows revive as training goes on). This
    callback does not search for the strength. Each row's own slots say at
    which `l21` its proximal step gives an all-zero row (its *survival
    strength*, `optimizer.survival_strengths`); every `update_every` steps
    the callback

    1. sets `l21` between the k-th and (k+1)-th smallest survival strengths
       of the counted rows of the steered tables, k = round(r(t) * rows),
       so that exactly the fraction r(t) of them is zero at that strength
       (with `per_table=True`, each table's k is within one row of its
       share and the k add up to round(r(t) * all rows): `zero_counts`;
       rows of equal survival strength are zero or live together, so where
       a tie group straddles the k-th row the strength goes below or above
       the group, whichever is nearer, and the next larger table makes up
       the difference: `unit_strengths`);
    2. re-applies the proximal step to every trained row of those tables at
       the new strength (`optimizer.shrink_rows`), so that rows not updated
       since do not keep weights of the old strength.

    After an update the sparsity equals r(t) up to one row, or half a tie
    group.
    The reference r(t) is tfmot's cubic schedule, from 0 at `begin_step` to
    `target` at `end_step`, then `target`:

        r(t) = target * (1 - (1 - (t - begin_step) / (end_step - begin_step))^3)

    An update also runs after the last batch of every epoch and when
    training ends, so the model that `fit` leaves (and each epoch's
    validation) is at the reference. Between updates the steps run at the
    fixed strength set last, and rows may revive or die; `history` records
    the sparsity before each update (`drifted`) and after it (`sparsity`).

    Rows that count are those of `row_sparsity` with the optimizer: rows
    never trained (an id absent from the training data, which keeps its
    initial values) are left out. With `per_table=False` (default) one
    quantile is taken over the rows of all steered tables, each table's
    survival strengths divided by the ratio of its `l21` to the first
    table's at the start (so `per_variable` ratios are kept; equal when the
    strengths start at 0); with `per_table=True` each table reaches `target`
    on its own.

    The optimizer's `l21` for these tables must be a number (not a
    schedule); it may start at 0. The strengths are optimizer variables:
    steering never retraces the train step, and they are saved with the
    optimizer. Keras 3 only (the `group_lasso_tf.tf_keras` optimizers have
    the same methods, but tf_keras's `fit` takes tf_keras callbacks).

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
        per_table: Steer each table separately. Defaults to `False`.
        verbose: 1 prints each update.

    After training, `history` holds the steps, references, sparsities
    before (`drifted`) and after (`sparsity`) each update, and the `l21` of
    the first steered table; `fit`'s epoch logs get `row_sparsity`, `l21`
    and `sparsity_reference`.
    """

    def __init__(self, target, tables=None, begin_step=None, end_step=None, update_every=None,
                 per_table=False, verbose=0):
        super().__init__()
        if isinstance(target, bool) or not isinstance(target, numbers.Real) \
                or not 0 <= target < 1:
            raise ValueError(f"`target` must be a fraction in [0, 1), got {target!r}")
        if update_every is not None and (isinstance(update_every, bool)
                                         or not isinstance(update_every, int)
                                         or update_every < 1):
            raise ValueError(f"`update_every` must be an int >= 1, got {update_every!r}")
        for name, value in (("begin_step", begin_step), ("end_step", end_step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")
        self.target = float(target)
        self.tables = tables
        self.begin_step = begin_step
        self.end_step = end_step
        self.update_every = update_every
        self.per_table = bool(per_table)
        self.verbose = verbose
        self.history = {"step": [], "reference": [], "drifted": [], "sparsity": [], "l21": []}

    # ------------------------------------------------------------ set-up
    def _optimizer(self):
        if not isinstance(self.model, keras.Model):
            raise TypeError(
                "SparsityTarget is a Keras 3 callback; this model is a "
                f"{type(self.model).__module__}.{type(self.model).__name__} (tf_keras's fit "
                "takes tf_keras callbacks)")
        optimizer = self.model.optimizer
        # LossScaleOptimizer (mixed_float16) wraps the group optimizer.
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if not hasattr(optimizer, "shrink_rows"):
            raise TypeError(
                "SparsityTarget steers a group_lasso_tf optimizer's l21; the model is compiled "
                f"with {type(optimizer).__name__}")
        return optimizer

    def _steered_tables(self):
        if self.tables is None:
            from group_lasso_tf.layers import DynamicEmbedding

            tables = []
            for layer in self.model._flatten_layers(include_self=False):
                if isinstance(layer, DynamicEmbedding):
                    tables += layer.pools  # each shard's pool is steered on its own
                elif isinstance(layer, keras.layers.Embedding):
                    tables.append(layer.embeddings)
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
            self._strengths.append(strength)
        start = np.array([float(s.numpy()) for s in self._strengths])
        # Each table's l21 relative to its unit's first (kept by per_table=False).
        self._ratios = start / start[0] if np.all(start > 0) else np.ones(len(tables))
        self._tables = tables
        self._units = [[i] for i in range(len(tables))] if self.per_table else [
            list(range(len(tables)))]
        start = int(optimizer.iterations.numpy())
        steps = (self.params or {}).get("steps") or 1
        total = steps * ((self.params or {}).get("epochs") or 1)
        self._steps_per_epoch = (self.params or {}).get("steps")
        self._begin = start if self.begin_step is None else int(self.begin_step)
        self._end = start + int(0.7 * total) if self.end_step is None else int(self.end_step)
        self._end = max(self._end, self._begin + 1)
        self._every = self.update_every or max(1, total // 100)
        counts = lambda: tf.stack([_zero_and_counted(optimizer, t) for t in tables])  # noqa
        # Two calls an update: the survival strengths with the counts before
        # it, then the re-applied step with the counts after it. Plain Python
        # inside (no autograph): tracing then takes a fraction of the time.
        function = functools.partial(tf.function, autograph=False)
        self._survival = function(
            lambda: ([optimizer.survival_strengths(t) for t in tables], counts()))

        def shrink():
            optimizer.shrink_rows(tables)
            return counts()

        self._shrink = function(shrink)
        self._counts = function(counts)  # traced only if `measure` is called

    # ------------------------------------------------------------ control
    def reference(self, step):
        """The sparsity the law steers to at optimizer step `step`: tfmot's
        cubic schedule from 0 at `begin_step` to `target` at `end_step`."""
        return pruning.polynomial_sparsity(step, 0.0, self.target, self._begin, self._end)

    def measure(self):
        """Fraction of zero rows among the counted rows of each steered unit."""
        counts = np.asarray(self._counts(), np.float64)
        return np.array([counts[u, 0].sum() / max(counts[u, 1].sum(), 1) for u in self._units])

    @staticmethod
    def _overall(counts):
        counts = np.asarray(counts, np.float64)
        return float(counts[:, 0].sum() / max(counts[:, 1].sum(), 1))

    def _update(self, step):
        reference = self.reference(step)
        survival, before = self._survival()
        survival = [_survival_basis(t, np.asarray(s, np.float64))
                    for t, s in zip(self._tables, survival)]
        values = [np.concatenate([survival[i] / self._ratios[i] for i in unit])
                  for unit in self._units]
        values = [v[~np.isnan(v)] for v in values]
        holders, levels = [], []
        for unit, level in zip(self._units, unit_strengths(values, reference)):
            if level is None:
                continue
            for i in unit:
                holders.append(self._strengths[i])
                levels.append(level * self._ratios[i])
        assign_strengths(holders, levels)
        after = self._shrink()
        self.history["step"].append(step)
        self.history["reference"].append(reference)
        self.history["drifted"].append(self._overall(before))
        self.history["sparsity"].append(self._overall(after))
        self.history["l21"].append(float(self._strengths[0].numpy()))
        if self.verbose:
            print(f"SparsityTarget step {step}: sparsity {self.history['drifted'][-1]:.3f} -> "
                  f"{self.history['sparsity'][-1]:.3f} (reference {reference:.3f}), "
                  f"l21 -> {self.history['l21'][-1]:.3g}")

    def on_train_batch_end(self, batch, logs=None):
        step = int(self._optimizer().iterations.numpy())
        if step < self._begin:
            return
        last_of_epoch = self._steps_per_epoch is not None and batch + 1 == self._steps_per_epoch
        if last_of_epoch or (step - self._begin) % self._every == 0:
            self._update(step)

    def on_train_end(self, logs=None):
        step = int(self._optimizer().iterations.numpy())
        if step >= self._begin and (not self.history["step"] or self.history["step"][-1] != step):
            self._update(step)

    def on_epoch_end(self, epoch, logs=None):
        # The last batch of the epoch has just been steered.
        if logs is not None and self.history["step"]:
            logs["row_sparsity"] = self.history["sparsity"][-1]
            logs["l21"] = self.history["l21"][-1]
            logs["sparsity_reference"] = self.history["reference"][-1]


def _survival_basis(table, survival):
    """The survival strengths the law sorts for a table: per row (NaN for
    rows never trained); for a `DynamicEmbedding` pool, those of its live
    rows, plus a zero per id whose row was freed (they count as zero rows,
    `_zero_and_counted`)."""
    shard = dynamic_index(table)
    if shard is None:
        return survival
    stats = keras.ops.convert_to_numpy(shard.stats)
    live = keras.ops.convert_to_numpy(shard.row_state)[:, 1] != 0
    freed = int(stats[1] - stats[3] - stats[0])  # admitted - evicted - live
    return np.concatenate([np.zeros(max(freed, 0)), survival[:shard.capacity][live]])


def zero_counts(rows, fraction):
    """How many rows of each unit to zero so that each is within one row of
    `fraction` and all together are `round(fraction * sum(rows))`: the
    floors of the quotas, plus one row for the units with the largest
    remainders (with many small tables, rounding each on its own would bias
    the total)."""
    quotas = fraction * np.asarray(rows, np.float64)
    counts = np.floor(quotas).astype(np.int64)
    extra = int(round(fraction * float(np.sum(rows)))) - int(counts.sum())
    counts[np.argsort(counts - quotas, kind="stable")[:max(extra, 0)]] += 1
    return counts


def unit_strengths(values, fraction):
    """The `l21` of each unit (None for a unit without rows), given the
    survival strengths of its rows, so that `round(fraction * all rows)` of
    them are zero: each unit's count from `zero_counts`, its strength from
    `strength_at_count`. Ties may keep a unit from its count; the units
    after it make up the difference: first the units whose rows of strength
    0 (zero at any `l21`, through `l1`) exceed their count, then the others,
    smallest first, so that the largest absorb it. The total is then off by
    at most half a tie group of the last unit, unless every unit is at its
    fewest zero rows."""
    counts = zero_counts([v.size for v in values], fraction)
    forced = [np.count_nonzero(v <= 0) > k for v, k in zip(values, counts)]
    levels = [None] * len(values)
    carry = 0  # rows zeroed so far beyond the counts
    for u in sorted(range(len(values)), key=lambda u: (not forced[u], values[u].size)):
        levels[u] = strength_at_count(values[u], counts[u] - carry)
        if levels[u] is not None:
            carry += int(np.count_nonzero(values[u] <= levels[u])) - int(counts[u])
    return levels


def strength_at_count(survival, k):
    """The `l21` at which as close to `k` as possible of the rows with these
    survival strengths are zero; None when there are no rows.

    Rows of equal strength are zero or live together (rows with identical
    slots, e.g. ids whose gradients were identical, are common), so when the
    k-th smallest strength is shared the two counts a strength can give are
    the rows strictly below it and the rows up to and including it: the one
    nearer k is taken (the larger on a draw). The strength returned lies
    midway between that group and its neighbour, away from both."""
    n = survival.size
    if n == 0:
        return None
    k = min(max(int(k), 0), n)
    if k == 0:
        return 0.5 * float(survival.min())  # rows of strength 0 are zero at any l21
    kth = float(np.partition(survival, k - 1)[k - 1])
    below = survival[survival < kth]
    above = survival[survival > kth]
    up_to = n - above.size
    if kth > 0 and k - below.size < up_to - k:  # fewer rows zero is nearer k
        return 0.5 * (float(below.max()) + kth) if below.size else 0.5 * kth
    if above.size == 0:
        return 2 * kth if kth > 0 else 0.0
    return 0.5 * (kth + float(above.min()))


def strength_at_sparsity(survival, fraction):
    """The `l21` at which `round(fraction * n)` of n rows with these survival
    strengths are zero (`strength_at_count`)."""
    return strength_at_count(survival, int(round(fraction * survival.size)))


def _zero_and_counted(optimizer, table):
    """(zero rows, counted rows) of a table, as in `row_sparsity`, in TF ops.

    For a `DynamicEmbedding` pool: its ids given a row and not evicted, less
    the live rows never trained, are counted; those whose row was freed are
    zero (`DynamicEmbedding.sparsity`, without the never-trained rows)."""
    x = as_rows(tf.convert_to_tensor(table))
    zero = tf.reduce_all(tf.equal(x, 0), axis=1)
    linear = as_rows(tf.convert_to_tensor(optimizer.get_slot(table, "linear")))
    never = tf.logical_and(tf.reduce_all(tf.equal(linear, 0), axis=1), tf.logical_not(zero))
    count = lambda mask: tf.reduce_sum(tf.cast(mask, tf.int64))  # noqa: E731
    shard = dynamic_index(table)
    if shard is None:
        return count(zero), tf.shape(x, out_type=tf.int64)[0] - count(never)
    stats = tf.convert_to_tensor(shard.stats)
    live = tf.not_equal(tf.convert_to_tensor(shard.row_state)[:, 1], 0)
    never_live = count(tf.logical_and(never[:shard.capacity], live))
    ids = stats[1] - stats[3]  # admitted - evicted
    return ids - stats[0], ids - never_live
