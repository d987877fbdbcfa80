"""Rows of variables and of `tf.IndexedSlices`, in TensorFlow ops.

A row is a slice along axis 0 (an embedding row, the outgoing weights of one
input unit of a `Dense` kernel): the group of the group lasso. Shared by the
TF-ops step (`tf_step`), the optimizers and `hessian`. Static shapes only
(these run inside XLA clusters too, which allow no `tf.unique`).
"""

import tensorflow as tf


def as_rows(t):
    """The [rows, d] view of a tensor: rows along axis 0; a scalar is one row."""
    if t.shape.rank == 0:
        return tf.reshape(t, [1, 1])
    if t.shape.is_fully_defined():  # one op instead of four when tracing
        return tf.reshape(t, [t.shape[0], -1])
    return tf.reshape(t, [tf.shape(t)[0], -1])


def id_runs(indices):
    """For each position: the number of its id among the distinct ids, and
    whether it is the first position holding that id.

    A stable sort of the ids, runs of equal ids numbered, mapped back to
    positions.
    """
    n = tf.shape(indices)[0]
    order = tf.argsort(indices, stable=True)
    sorted_ids = tf.gather(indices, order)
    is_new = tf.logical_or(
        tf.equal(tf.range(n), 0), tf.not_equal(sorted_ids, tf.roll(sorted_ids, 1, axis=0))
    )
    rank = tf.argsort(order)  # position -> its place in sorted order
    run_sorted = tf.cumsum(tf.cast(is_new, tf.int32)) - 1
    return tf.gather(run_sorted, rank), tf.gather(is_new, rank)


def row_sums(values, indices):
    """`values` (one row per position) summed over the positions of each id,
    given back at every position. Duplicate ids then hold identical rows, so
    the order in which they are scattered is moot."""
    run_of_position, _ = id_runs(indices)
    summed = tf.math.unsorted_segment_sum(values, run_of_position, tf.shape(indices)[0])
    return tf.gather(summed, run_of_position)


def first_positions(indices):
    """Boolean mask: True at the first position of each distinct id."""
    return id_runs(indices)[1]


def rows_at(values, indices, target_indices):
    """Rows of (values, indices), summed per id, laid out on `target_indices`.

    The sum of each id's rows sits at the first position of that id in
    `target_indices`, zeros everywhere else (and ids absent from
    `target_indices` are dropped), so that summing duplicates over
    `target_indices`, as the sparse ops do, gives back each id's sum once.
    """
    n = tf.shape(target_indices)[0]
    combined = tf.concat([target_indices, tf.cast(indices, target_indices.dtype)], 0)
    zeros = tf.zeros(tf.concat([[n], tf.shape(values)[1:]], 0), values.dtype)
    sums = row_sums(tf.concat([zeros, values], 0), combined)[:n]
    first = tf.reshape(first_positions(target_indices), [-1] + [1] * (values.shape.rank - 1))
    return tf.where(first, sums, tf.zeros_like(sums))
