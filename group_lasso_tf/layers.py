"""`DynamicEmbedding`: an embedding table over any int64 ids, whose rows are
made on first sight and freed when the group lasso zeroes them
(docs/dynamic_embedding.md).

The table is a pool variable of `capacity + 1` rows (the last is a shared
all-zero row, read by ids not admitted) that the optimizer updates like any
embedding, plus a key index held in five int64 variables and changed by the
ops of `cc/ops/dynamic_embedding_ops.cc`. Being variables, the index is
saved and restored with the model (`model.save`, `tf.train.Checkpoint`).
"""

import contextlib

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


def _num_parameter_servers(strategy):
    """The parameter servers of a ParameterServerStrategy: the count the
    strategy keeps from its cluster spec (no public attribute has it: its
    `extended.parameter_devices` lists one device)."""
    count = getattr(strategy.extended, "_num_ps", None)
    if not count:
        raise ValueError("DynamicEmbedding cannot tell how many parameter servers this "
                         "ParameterServerStrategy has: pass `num_shards`")
    return int(count)


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
            Keras initializer; a random one draws new values for every
            admission, from a generator started at its integer seed if it
            has one, so that seeded runs are reproducible). Defaults to
            `"uniform"`, as `Embedding`.
        min_count: Sightings before an id is admitted. Defaults to `1`.
        on_full: `"drop"` (default) or `"evict_lru"`.
        pending_capacity: Ids counted towards `min_count` at once (the
            counts are forgotten when more are pending). Defaults to
            `capacity` (unused with `min_count=1`).
        num_shards: Shards the table is split into by key (each with its own
            pool and index; `capacity` and `pending_capacity` are divided
            among them, rounded up). Defaults to the number of parameter
            servers under `tf.distribute.ParameterServerStrategy`, which puts
            each shard on its own server, and to 1 otherwise.

    Lookups with `training=False` (`predict`, `evaluate`) admit nothing and
    change nothing: ids without a row read zeros. Call it on an integer
    tensor of ids (int32, int64, or uint64 as int64
    bits); string ids go through `fingerprint` first. Float ids are an error.
    Needs the fused op library; not inside `jit_compile=True`.
    """

    def __init__(self, output_dim, capacity, embeddings_initializer="uniform", min_count=1,
                 on_full="drop", pending_capacity=None, num_shards=None, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = _positive_int("output_dim", output_dim)
        self.capacity = _positive_int("capacity", capacity)
        self.min_count = _positive_int("min_count", min_count)
        if on_full not in ON_FULL:
            raise ValueError(f"`on_full` must be one of {ON_FULL}, got {on_full!r}")
        self.on_full = on_full
        self.pending_capacity = _positive_int(
            "pending_capacity", self.capacity if pending_capacity is None else pending_capacity)
        self.num_shards = None if num_shards is None else _positive_int("num_shards", num_shards)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        # An initializer's integer seed starts the layer's generator: runs
        # with the same seed draw the same rows (as Keras's seeded layers).
        seed = self.embeddings_initializer.get_config().get("seed")
        self._seed_generator = keras.random.SeedGenerator(seed if isinstance(seed, int) else None)
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
        strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
        on_ps = isinstance(strategy, tf.distribute.ParameterServerStrategy)
        if strategy is not None and not on_ps:
            raise ValueError(
                f"DynamicEmbedding does not run under {type(strategy).__name__}: its replicas "
                "would admit different ids and their tables would drift apart. Use "
                "tf.distribute.ParameterServerStrategy, which shards the table by key over the "
                "parameter servers (docs/dynamic_embedding.md#parameterserverstrategy).")
        num_shards = self.num_shards
        if num_shards is None:
            num_shards = _num_parameter_servers(strategy) if on_ps else 1
        self.shard_capacity = -(-self.capacity // num_shards)  # ceil: no shard smaller
        self._shard_pending = -(-self.pending_capacity // num_shards)
        shards = []
        for number in range(num_shards):
            with self._on_one_server(strategy if on_ps else None):
                shards.append(self._build_shard(number))
        # Not a tracked attribute: the variables are (above); this is a view.
        object.__setattr__(self, "_shards", shards)
        self.built = True

    @staticmethod
    def _on_one_server(strategy):
        """Under ParameterServerStrategy: a scope that creates every variable
        of a shard on one parameter server (the round-robin server of a
        scalar anchor, so consecutive shards go to consecutive servers, and a
        `variable_partitioner` never splits a pool: colocated variables are
        not partitioned)."""
        if strategy is None:
            return contextlib.nullcontext()
        anchor = tf.Variable(0, dtype=tf.int64, trainable=False, name="shard_anchor")
        return strategy.extended.colocate_vars_with(anchor)

    def _build_shard(self, number):
        # Rows are filled on admission: the pool starts zero, the last row
        # (the shared zero row) stays zero.
        suffix = "" if number == 0 else f"_{number}"
        shapes = {"embeddings": (self.shard_capacity + 1, self.output_dim)}
        table_size = _power_of_two_at_least(2 * self.shard_capacity)
        # Sightings are only counted when min_count > 1.
        pending_size = (_power_of_two_at_least(2 * self._shard_pending) if self.min_count > 1
                        else 1)
        shapes.update(key_table=(table_size, 2), row_state=(self.shard_capacity, 3),
                      free_rows=(self.shard_capacity,), pending=(pending_size, 2), stats=(8,))
        variables = {}
        for name, shape in shapes.items():
            pool = name == "embeddings"
            variables[name] = self.add_weight(
                shape=shape, initializer="zeros", dtype=None if pool else "int64",
                trainable=pool, name=name + suffix)
            # Attributes, so that Keras and tf.train.Checkpoint track them.
            setattr(self, name + suffix, variables[name])
        shard = Shard(number, self.shard_capacity, self.on_full, **variables)
        # The optimizers find the index of the pool they update here (Keras's
        # TensorFlow optimizer hands them the tf.Variable behind the Keras one).
        shard.embeddings._group_lasso_dynamic_index = shard
        shard.embeddings.value._group_lasso_dynamic_index = shard
        return shard

    @property
    def shards(self):
        """The table's shards (`Shard`), in shard order: one unless sharded."""
        return list(self._shards)

    @property
    def pools(self):
        """The pool variable of every shard (the table's trainable weights)."""
        return [shard.embeddings for shard in self._shards]

    def index_handles(self):
        """Resource handles of the index variables of an unsharded table, in
        the ops' input order."""
        if len(self._shards) != 1:
            raise ValueError(f"{self.name} has {len(self._shards)} shards: use "
                             "layer.shards[i].index_handles()")
        return self._shards[0].index_handles()

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
        training = training is not False
        if len(self._shards) == 1:
            out = self._lookup(self._shards[0], flat, training)
        else:
            # Each shard's lookup, writes and gather take its variables, so
            # they run on its parameter server; shards in order (the
            # initializer's draws do not depend on timing).
            num_shards = len(self._shards)
            shard_of = _ops.fused_ops().group_lasso_dynamic_shard(flat, num_shards=num_shards)
            parts = tf.dynamic_partition(flat, shard_of, num_shards)
            positions = tf.dynamic_partition(tf.range(tf.size(flat)), shard_of, num_shards)
            out = tf.dynamic_stitch(
                positions, [self._lookup(shard, part, training)
                            for shard, part in zip(self._shards, parts)])
        return tf.reshape(out, tf.concat([tf.shape(ids), [self.output_dim]], 0))

    def _lookup(self, shard, flat, training):
        """The rows of `flat` (ids of this shard) in its pool, admitting."""
        rows, fresh = _ops.fused_ops().group_lasso_dynamic_lookup(
            *shard.index_handles(), flat, min_count=self.min_count, on_full=self.on_full,
            training=training)
        writes = []
        if training:  # rows taken now get initial values
            new_rows = tf.boolean_mask(rows, fresh)
            values = self._row_initializer(shape=(tf.shape(new_rows)[0], self.output_dim),
                                           dtype=shard.embeddings.dtype)
            # Not scatter_update: ResourceScatterUpdate switches the pool to
            # copy-on-read, and copied all of it at every call (6 ms at 10^6 x 16).
            writes.append(_ops.fused_ops().group_lasso_dynamic_write_rows(
                shard.embeddings.value.handle, new_rows, values))
        with tf.control_dependencies(writes):
            gathered = tf.gather(shard.embeddings.value, rows)
        # Ids not admitted read the zero row; masked, their gradient does not
        # reach it, so it stays zero. The mask is a pass over the batch's rows
        # (about a quarter of the step at 65,536 ids), paid only in the steps
        # where some id went unadmitted (min_count, a full pool).
        admitted = tf.less(rows, shard.capacity)
        return tf.cond(tf.reduce_all(admitted), lambda: gathered,
                       lambda: gathered * tf.cast(admitted, gathered.dtype)[:, None])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def live_rows(self):
        """(keys, rows): the ids holding a row and their rows (NumPy), shard
        after shard."""
        keys, rows = [], []
        for shard in self._shards:
            state = keras.ops.convert_to_numpy(shard.row_state)
            live = np.flatnonzero(state[:, 1] != 0)
            keys.append(state[live, 0])
            rows.append(keras.ops.convert_to_numpy(shard.embeddings)[live])
        return np.concatenate(keys), np.concatenate(rows)

    def table_stats(self):
        """{live, capacity, admitted, released, evicted, dropped}: Python ints,
        summed over the shards (`capacity`: the rows of all pools)."""
        total = sum(keras.ops.convert_to_numpy(shard.stats) for shard in self._shards)
        out = {name: int(total[i]) for i, name in enumerate(STAT_NAMES)}
        out["capacity"] = self.shard_capacity * len(self._shards)
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
            "pending_capacity": self.pending_capacity, "num_shards": self.num_shards})
        return config


class Shard:
    """One shard of a `DynamicEmbedding`: its pool (`embeddings`, with
    `capacity + 1` rows, the last the shared zero row) and the index of its
    keys (five int64 variables, `INDEX_VARIABLES`). An unsharded table is one
    shard."""

    def __init__(self, number, capacity, on_full, embeddings, **index):
        self.number, self.capacity, self.on_full = number, capacity, on_full
        self.embeddings = embeddings
        for name in INDEX_VARIABLES:
            setattr(self, name, index[name])

    def index_handles(self):
        """Resource handles of the index variables, in the ops' input order."""
        return [getattr(self, name).value.handle for name in INDEX_VARIABLES]


def dynamic_index(variable):
    """The `Shard` of a `DynamicEmbedding` whose pool `variable` is, or None."""
    return getattr(variable, "_group_lasso_dynamic_index", None)
