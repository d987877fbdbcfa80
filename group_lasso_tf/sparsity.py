"""Row sparsity of a model's variables, and a Keras callback that logs it.

A row is a slice along axis 0 (an embedding row = a feature id, a `Dense`
kernel row = an input unit); it is *zero* when all its elements are exactly 0.
Under lazy updates an embedding row that training never touched keeps its
initial values: when the optimizer is given, such rows (their linear slot is
all zero and the row is not) are counted separately as `never_trained`.
"""

import dataclasses

import keras
import numpy as np


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
