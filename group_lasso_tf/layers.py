"""`DynamicEmbedding`: an embedding table over any int64 ids, whose rows are
made on first sight and freed when the group lasso zeroes them
(docs/dynamic_embedding.md).

The table is a pool variable of `capacity + 1` rows (the last is a shared
all-zero row, read by ids not admitted) that the optimizer updates like any
embedding, plus a key index held in five int64 variables and changed by the
ops of `cc/ops/dynamic_embedding_ops.cc`. Being variables, the index is
saved and restored with the model (`model.save`, `tf.train.Checkpoint`).
"""

import keras
import numpy as np
import tensorflow as tf

from group_lasso_tf import ops as _ops

ON_FULL = ("drop", "evict_lru")
# The index's variables, in the ops' input order (cc/ops/dynamic_embedding_ops.cc).
INDEX_VARIABLES = ("key_table", "row_state", "free_rows", "pending", "stats")
STAT_NAMES = ("live", "admitted", "released", "evicted", "dropped")  # dynamic_index.h, Stat


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
    return value


def _power_of_two_at_least(n):
    size = 1
    while size < n:
        size *= 2
    return size


def fingerprint(ids):
    """int64 ids of string ids: TensorFlow's `tf.strings.to_hash_bucket_fast`
    over the whole int64 range less one (FarmHash fingerprint64, stable
    across runs and machines)."""
    return tf.strings.to_hash_bucket_fast(ids, 2**63 - 1)


@keras.saving.register_keras_serializable(package="group_lasso_tf")
class DynamicEmbedding(keras.layers.Layer):
    """Embedding of int64 ids of any value, with no vocabulary.

    An unseen id gets a row of the pool once it has been looked up
    `min_count` times (its row is then filled by `embeddings_initializer`);
    until then, and when the pool is full under `on_full="drop"`, it reads a
    shared all-zero row that is never updated. `on_full="evict_lru"` gives a
    new id the row of the least recently seen one instead. When the group
    lasso of a group optimizer makes a row exactly zero, the optimizer frees
    it in the same step: its id leaves the index, the row and its optimizer
    slots are cleared, and an id that comes back starts fresh. Training
    memory is the pool: `capacity` rows whatever the number of distinct ids.

    Args:
        output_dim: Size of each embedding row, >= 1.
        capacity: Rows of the pool, >= 1.
        embeddings_initializer: Initializer of an admitted id's row (any
            Keras initializer; a seeded random one draws new values for
            every admission). Defaults to `"uniform"`, as `Embedding`.
        min_count: Sightings before an id is admitted. Defaults to `1`.
        on_full: `"drop"` (default) or `"evict_lru"`.
        pending_capacity: Ids counted towards `min_count` at once (the
            counts are forgotten when more are pending). Defaults to
            `capacity` (unused with `min_count=1`).

    Lookups with `training=False` (`predict`, `evaluate`) admit nothing and
    change nothing: ids without a row read zeros. Call it on an integer
    tensor of ids (int32, int64, or uint64 as int64
    bits); string ids go through `fingerprint` first. Float ids are an error.
    Needs the fused op library; not inside `jit_compile=True`.
    """

    def __init__(self, output_dim, capacity, embeddings_initializer="uniform", min_count=1,
                 on_full="drop", pending_capacity=None, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = _positive_int("output_dim", output_dim)
        self.capacity = _positive_int("capacity", capacity)
        self.min_count = _positive_int("min_count", min_count)
        if on_full not in ON_FULL:
            raise ValueError(f"`on_full` must be one of {ON_FULL}, got {on_full!r}")
        self.on_full = on_full
        self.pending_capacity = _positive_int(
            "pending_capacity", self.capacity if pending_capacity is None else pending_capacity)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self._seed_generator = keras.random.SeedGenerator()
        # Its state as an attribute, so that tf.train.Checkpoint saves it too:
        # a resumed run draws the same initial rows as an uninterrupted one.
        self.seed_state = self._seed_generator.state
        self._row_initializer = self._reseeded(self.embeddings_initializer)

    def _reseeded(self, initializer):
        """The initializer with a seed generator of the layer's, so that every
        call draws new values (a Keras initializer with an integer seed gives
        the same values at every call)."""
        config = initializer.get_config()
        if "seed" not in config:
            return initializer
        config["seed"] = self._seed_generator
        return initializer.__class__(**config)

    def build(self, input_shape=None):
        if _ops.fused_ops() is None:
            raise RuntimeError("DynamicEmbedding needs the fused op library: "
                               f"{_ops.unavailable_reason()}")
        if tf.distribute.has_strategy():
            raise ValueError(
                "DynamicEmbedding does not support tf.distribute strategies yet "
                f"({type(tf.distribute.get_strategy()).__name__}): replicas would admit "
                "different ids. Sharding by key under ParameterServerStrategy is planned "
                "(docs/dynamic_embedding.md#limits-what-is-not-done-yet).")
        # Rows are filled on admission: the pool starts zero, the last row
        # (the shared zero row) stays zero.
        self.embeddings = self.add_weight(shape=(self.capacity + 1, self.output_dim),
                                          initializer="zeros", name="embeddings")
        table_size = _power_of_two_at_least(2 * self.capacity)
        # Sightings are only counted when min_count > 1.
        pending_size = (_power_of_two_at_least(2 * self.pending_capacity) if self.min_count > 1
                        else 1)
        # Attributes, so that Keras and tf.train.Checkpoint track them.
        for name, shape in (("key_table", (table_size, 2)), ("row_state", (self.capacity, 3)),
                            ("free_rows", (self.capacity,)), ("pending", (pending_size, 2)),
                            ("stats", (8,))):
            setattr(self, name, self.add_weight(shape=shape, initializer="zeros", dtype="int64",
                                                trainable=False, name=name))
        # The optimizers find the index of the pool they update here (Keras's
        # TensorFlow optimizer hands them the tf.Variable behind the Keras one).
        self.embeddings._group_lasso_dynamic_index = self
        self.embeddings.value._group_lasso_dynamic_index = self
        self.built = True

    def index_handles(self):
        """Resource handles of the index variables, in the ops' input order."""
        return [getattr(self, name).value.handle for name in INDEX_VARIABLES]

    def call(self, inputs, training=None):
        ids = tf.convert_to_tensor(inputs)
        if not ids.dtype.is_integer:
            raise TypeError(f"DynamicEmbedding ids must be integers, got dtype {ids.dtype.name} "
                            "(string ids: group_lasso_tf.layers.fingerprint(ids))")
        from group_lasso_tf.optimizers.base import in_xla_context
        if in_xla_context():
            raise ValueError("DynamicEmbedding cannot run inside an XLA cluster "
                             "(jit_compile=True): its index is a custom op. Compile with "
                             "jit_compile=False.")
        ids = tf.cast(ids, tf.int64) if ids.dtype != tf.uint64 else tf.bitcast(ids, tf.int64)
        flat = tf.reshape(ids, [-1])
        # Inference (training=False: predict, evaluate) admits nothing and
        # changes nothing: unknown ids read zeros, as in the exported table.
        rows, fresh = _ops.fused_ops().group_lasso_dynamic_lookup(
            *self.index_handles(), flat, min_count=self.min_count, on_full=self.on_full,
            training=training is not False)
        writes = []
        if training is not False:  # rows taken now get initial values
            new_rows = tf.boolean_mask(rows, fresh)
            values = self._row_initializer(shape=(tf.shape(new_rows)[0], self.output_dim),
                                           dtype=self.embeddings.dtype)
            # Not scatter_update: ResourceScatterUpdate switches the pool to
            # copy-on-read, and copied all of it at every call (6 ms at 10^6 x 16).
            writes.append(_ops.fused_ops().group_lasso_dynamic_write_rows(
                self.embeddings.value.handle, new_rows, values))
        with tf.control_dependencies(writes):
            gathered = tf.gather(self.embeddings.value, rows)
        # Ids not admitted read the zero row, with a zero gradient: it stays zero.
        admitted = tf.less(rows, self.capacity)[:, None]
        out = tf.where(admitted, gathered, tf.zeros_like(gathered))
        return tf.reshape(out, tf.concat([tf.shape(ids), [self.output_dim]], 0))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def live_rows(self):
        """(keys, rows): the ids holding a row and their pool rows (NumPy)."""
        state = keras.ops.convert_to_numpy(self.row_state)
        live = np.flatnonzero(state[:, 1] != 0)
        return state[live, 0].copy(), keras.ops.convert_to_numpy(self.embeddings)[live]

    def table_stats(self):
        """{live, capacity, admitted, released, evicted, dropped}: Python ints."""
        stats = keras.ops.convert_to_numpy(self.stats)
        out = {name: int(stats[i]) for i, name in enumerate(STAT_NAMES)}
        out["capacity"] = self.capacity
        return out

    def sparsity(self):
        """1 - live / (admitted - evicted): the fraction of the ids given a row
        (and not evicted) whose row the group lasso has freed."""
        stats = self.table_stats()
        return 1.0 - stats["live"] / max(stats["admitted"] - stats["evicted"], 1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_dim": self.output_dim, "capacity": self.capacity,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "min_count": self.min_count, "on_full": self.on_full,
            "pending_capacity": self.pending_capacity})
        return config


def dynamic_index(variable):
    """The `DynamicEmbedding` whose pool `variable` is, or None."""
    return getattr(variable, "_group_lasso_dynamic_index", None)
