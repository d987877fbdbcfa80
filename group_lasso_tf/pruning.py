"""Magnitude pruning of rows: the baseline the paper compares against.

`magnitude_prune` zeroes the rows of smallest L2 norm of a trained model's
embedding tables to a target row sparsity, per table or over all tables
together. `GradualPruning` does it during training on a polynomial schedule
(the schedule of tfmot's `PolynomialDecay`, which has no Keras 3 support).
"""

import keras
import numpy as np


def _tables(model, variables=None):
    if variables is not None:
        return list(variables)
    return [layer.embeddings for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Embedding)]


def _row_norms(value):
    return np.linalg.norm(value.reshape(value.shape[0], -1), axis=1)


def magnitude_prune(model, target, per_table=True, variables=None):
    """Zero the rows of smallest L2 norm until `target` of the rows are zero.

    Args:
        model: a Keras model; its `Embedding` tables are pruned unless
            `variables` names others.
        target: row sparsity to reach, in [0, 1]. Rows already zero count.
        per_table: `True` prunes each table to `target`; `False` ranks the rows
            of all tables together (global pruning).
        variables: optional list of variables (rank >= 2) to prune instead.

    Returns:
        {variable path: achieved row sparsity}.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"`target` must be in [0, 1], got {target!r}")
    tables = _tables(model, variables)
    values = [keras.ops.convert_to_numpy(v) for v in tables]
    if per_table:
        masks = []
        for value in values:
            k = int(round(target * value.shape[0]))
            order = np.argsort(_row_norms(value), kind="stable")
            mask = np.ones(value.shape[0], bool)
            mask[order[:k]] = False
            masks.append(mask)
    else:
        norms = np.concatenate([_row_norms(v) for v in values])
        k = int(round(target * norms.size))
        keep = np.ones(norms.size, bool)
        keep[np.argsort(norms, kind="stable")[:k]] = False
        masks = np.split(keep, np.cumsum([v.shape[0] for v in values])[:-1])
    result = {}
    for variable, value, mask in zip(tables, values, masks):
        pruned = value * mask.reshape((-1,) + (1,) * (value.ndim - 1)).astype(value.dtype)
        variable.assign(pruned)
        result[getattr(variable, "path", variable.name)] = float(np.mean(~mask))
    return result


def polynomial_sparsity(step, initial_sparsity, final_sparsity, begin_step, end_step, power=3.0):
    """tfmot's PolynomialDecay schedule: sparsity at `step`."""
    if step <= begin_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    progress = (step - begin_step) / (end_step - begin_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** power


class GradualPruning(keras.callbacks.Callback):
    """Prunes embedding rows during training on a polynomial schedule.

    Every `frequency` steps between `begin_step` and `end_step` it zeroes the
    smallest rows to `polynomial_sparsity(step, ...)`; after `end_step` it keeps
    pruned rows at zero at the end of each batch (the optimizer would revive
    them otherwise).
    """

    def __init__(self, final_sparsity, begin_step=0, end_step=1000, initial_sparsity=0.0,
                 power=3.0, frequency=100, per_table=True, variables=None):
        super().__init__()
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.begin_step, self.end_step = begin_step, end_step
        self.power, self.frequency = power, frequency
        self.per_table, self.variables = per_table, variables
        self._step = 0
        self._masks = None

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        tables = _tables(self.model, self.variables)
        due = (self.begin_step <= self._step <= self.end_step and
               (self._step - self.begin_step) % self.frequency == 0) or self._step == self.end_step
        if due:
            target = polynomial_sparsity(self._step, self.initial_sparsity, self.final_sparsity,
                                         self.begin_step, self.end_step, self.power)
            magnitude_prune(self.model, target, self.per_table, tables)
            self._masks = [np.any(keras.ops.convert_to_numpy(t).reshape(t.shape[0], -1) != 0,
                                  axis=1) for t in tables]
        elif self._masks is not None and self._step > self.end_step:
            for table, mask in zip(tables, self._masks):
                value = keras.ops.convert_to_numpy(table)
                table.assign(value * mask.reshape((-1,) + (1,) * (value.ndim - 1)))
