"""Serving export with pruned embedding tables.

    python -m group_lasso_tf.export SRC.keras DST [--drop-never-trained]

writes a SavedModel for TF Serving in which every `keras.layers.Embedding`
table keeps only its non-zero rows, and every `layers.DynamicEmbedding` becomes
a compact static table of its live, non-zero rows. Original ids map to compact rows through a
`tf.lookup.StaticHashTable` (stock TensorFlow ops); ids of removed rows, and
ids unknown to the table, gather the zero vector. A zero row gathered is a
zero row, so predictions equal the unpruned model's, bit for bit. The
SavedModel contains no op of this package: it loads in a process that never
imports it, and `saved_model_cli run` serves its `serving_default` signature.

`drop_never_trained=True` (needs the trained optimizer) also removes rows that
training never touched (their linear slot is all zero; under lazy updates they
keep their initial values): those ids then map to the zero vector, which
changes predictions for ids never seen in training.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from group_lasso_tf import sparsity as _sparsity
from group_lasso_tf.layers import DynamicEmbedding


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class PrunedEmbedding(keras.layers.Layer):
    """An embedding table that holds only the kept rows of a larger one.

    `kept_ids[i]` is the original id of compact row `i`; any other id gathers
    a zero row (the last row of the compact table).
    """

    def __init__(self, kept_ids, compact_table, **kwargs):
        super().__init__(**kwargs)
        kept_ids = np.asarray(kept_ids, np.int64)
        compact_table = np.asarray(compact_table)
        self.kept_ids = kept_ids
        self.output_dim = compact_table.shape[1]
        self.table = self.add_weight(
            shape=(len(kept_ids) + 1, self.output_dim),
            initializer=keras.initializers.Constant(
                np.concatenate([compact_table, np.zeros((1, self.output_dim), compact_table.dtype)])
            ),
            dtype=compact_table.dtype,
            trainable=False,
            name="compact_table",
        )
        # A table with no kept row has nothing to look up (and TensorFlow's
        # static tables cannot be empty): every id reads the zero row.
        self._lookup = None if not len(kept_ids) else tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(kept_ids, tf.int64), tf.range(len(kept_ids), dtype=tf.int64)
            ),
            default_value=len(kept_ids),
        )

    def call(self, ids):
        ids = tf.cast(ids, tf.int64)
        if self._lookup is None:
            return tf.gather(self.table, tf.zeros_like(ids))
        return tf.gather(self.table, self._lookup.lookup(ids))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)


@dataclasses.dataclass
class ExportReport:
    """What the export removed, in rows and bytes."""

    tables: dict  # name -> (rows before, rows kept)
    variable_bytes_before: int
    variable_bytes_after: int
    disk_bytes: int  # the exported SavedModel
    disk_bytes_unpruned: int = None  # the same export without pruning, when measured

    def __str__(self):
        lines = [f"{'table':<28}{'rows':>10}{'kept':>10}"]
        for name, (rows, kept) in self.tables.items():
            lines.append(f"{name:<28}{rows:>10}{kept:>10}")
        lines.append(
            f"variable bytes: {self.variable_bytes_before:,} -> {self.variable_bytes_after:,} "
            f"({self.variable_bytes_after / max(self.variable_bytes_before, 1):.1%}); "
            f"SavedModel on disk: {self.disk_bytes:,} bytes"
            + (f" (unpruned: {self.disk_bytes_unpruned:,})" if self.disk_bytes_unpruned else "")
        )
        return "\n".join(lines)


def _variable_bytes(variables):
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def _directory_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def pruned_model(model, drop_never_trained=False, optimizer=None):
    """A copy of `model` whose Embedding layers keep only their non-zero rows.

    Returns (serving model, {layer name: (rows, kept rows)}).
    """
    optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    if drop_never_trained and (optimizer is None or "linear" not in getattr(optimizer, "_group_slot_names", ())):
        raise ValueError("`drop_never_trained` needs the trained group-lasso optimizer "
                         "(its linear slots tell which rows were never updated)")
    tables = {}

    def clone(layer):
        if isinstance(layer, DynamicEmbedding):
            keys, value = layer.live_rows()
            keep = np.any(value != 0, axis=1)
            tables[layer.name] = (layer.capacity, int(keep.sum()))
            return PrunedEmbedding(keys[keep], value[keep], name=layer.name)
        if not isinstance(layer, keras.layers.Embedding):
            return layer.__class__.from_config(layer.get_config())
        value = keras.ops.convert_to_numpy(layer.embeddings)
        keep = np.any(value != 0, axis=1)
        if drop_never_trained:
            linear = keras.ops.convert_to_numpy(optimizer.get_slot(layer.embeddings, "linear"))
            keep &= np.any(linear != 0, axis=1)
        kept_ids = np.flatnonzero(keep)
        tables[layer.name] = (value.shape[0], len(kept_ids))
        return PrunedEmbedding(kept_ids, value[kept_ids], name=layer.name)

    serving = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, serving.layers):
        if not isinstance(old, (keras.layers.Embedding, DynamicEmbedding)) and old.weights:
            new.set_weights(old.get_weights())
    return serving, tables


def export_pruned(model, dst, drop_never_trained=False, optimizer=None, measure_unpruned=False):
    """Writes the pruned serving SavedModel of `model` to `dst`; returns an ExportReport.

    The SavedModel is written to a temporary directory beside `dst` and moved
    into place at the end, so a failure leaves nothing partial at `dst`.
    `measure_unpruned=True` also exports the original model to a temporary
    directory, to report its size on disk.
    """
    if os.path.exists(dst):
        raise FileExistsError(f"export destination {dst!r} already exists")
    serving, tables = pruned_model(model, drop_never_trained, optimizer)
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        serving.export(tmp, format="tf_saved_model", verbose=False)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    unpruned = None
    if measure_unpruned:
        with tempfile.TemporaryDirectory(dir=parent) as tmp_unpruned:
            model.export(os.path.join(tmp_unpruned, "m"), format="tf_saved_model", verbose=False)
            unpruned = _directory_bytes(tmp_unpruned)
    return ExportReport(
        tables=tables,
        variable_bytes_before=_variable_bytes(model.weights),
        variable_bytes_after=_variable_bytes(serving.weights),
        disk_bytes=_directory_bytes(dst),
        disk_bytes_unpruned=unpruned,
    )


def _load(path):
    """The model, compiled where its optimizer loads: the optimizer's slots
    tell never-trained rows (the sparsity printed leaves them out, as
    group_lasso_tf.sparsity does; without the optimizer every row counts)."""
    try:
        return keras.models.load_model(path, compile=True)
    except Exception:  # noqa: BLE001 - e.g. a loss or metric that does not deserialize
        return keras.models.load_model(path, compile=False)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m group_lasso_tf.export", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="a Keras model saved with model.save('....keras')")
    parser.add_argument("dst", help="directory to create for the SavedModel")
    parser.add_argument("--drop-never-trained", action="store_true",
                        help="also remove rows that training never updated")
    args = parser.parse_args(argv)
    if os.path.exists(args.dst):
        parser.exit(2, f"error: destination {args.dst!r} already exists; nothing written\n")
    if not (os.path.isfile(args.src) and args.src.endswith(".keras")):
        parser.exit(2, f"error: {args.src!r} is not a .keras model file; nothing written\n")
    try:
        model = _load(args.src)
    except Exception as e:  # a corrupted or foreign file: say so, write nothing
        parser.exit(2, f"error: cannot load {args.src!r} as a Keras model ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); nothing written\n")
    report = export_pruned(model, args.dst, drop_never_trained=args.drop_never_trained,
                           measure_unpruned=True)
    print(report)
    stats = _sparsity.embedding_sparsity(model).values()
    zero = sum(s.zero_rows for s in stats)
    counted = sum(s.counted_rows for s in stats)
    never = sum(s.never_trained_rows for s in stats)
    print(f"embedding row sparsity of {args.src}: {zero}/{counted} "
          f"({_sparsity.overall_sparsity(stats):.1%}; {never} rows never trained not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
