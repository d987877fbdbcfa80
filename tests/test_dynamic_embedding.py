"""DynamicEmbedding: the key index against a NumPy model of its semantics on
random id streams (fresh every run), release through the optimizer, zero-
strength equivalence with a fixed Embedding, save/restore, bad input."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from group_lasso_tf import ops
from group_lasso_tf.layers import DynamicEmbedding

pytestmark = pytest.mark.skipif(not ops.fused_available(), reason="op library not built")


class IndexModel:
    """The index's semantics in plain Python (docs/dynamic_embedding.md)."""

    def __init__(self, capacity, min_count, on_full):
        self.capacity, self.min_count, self.on_full = capacity, min_count, on_full
        self.key_row, self.row_key, self.last_seen = {}, {}, {}
        self.free, self.next_unused, self.pending, self.clock = [], 0, {}, 0
        self.stats = dict(live=0, admitted=0, released=0, evicted=0, dropped=0)

    def _take_row(self):
        if self.free:
            return self.free.pop()
        if self.next_unused < self.capacity:
            self.next_unused += 1
            return self.next_unused - 1
        return None

    def _unbind(self, row):
        del self.key_row[self.row_key.pop(row)]
        del self.last_seen[row]
        self.stats["live"] -= 1

    def lookup(self, ids):
        clock, self.clock = self.clock, self.clock + 1
        # Keys already in the index are seen first (none of them is evicted
        # by this call); the others are admitted in order.
        known = [key in self.key_row for key in ids]
        for key, hit in zip(ids, known):
            if hit:
                self.last_seen[self.key_row[key]] = clock
        rows, fresh, victims = [], [], None
        for i, key in enumerate(ids):
            if key in self.key_row:
                rows.append(self.key_row[key]), fresh.append(False)
                continue
            rows.append(self.capacity), fresh.append(False)
            if self.min_count > 1:
                self.pending[key] = self.pending.get(key, 0) + 1
                if self.pending[key] < self.min_count:
                    continue
                del self.pending[key]
            row = self._take_row()
            if row is None and self.on_full == "evict_lru":
                if victims is None:
                    old = sorted((seen, r) for r, seen in self.last_seen.items() if seen < clock)
                    victims = [r for _, r in old[:len(ids) - i]]
                if victims:
                    row = victims.pop(0)
                    self._unbind(row)
                    self.stats["evicted"] += 1
            if row is None:
                self.stats["dropped"] += 1
                continue
            self.key_row[key], self.row_key[row], self.last_seen[row] = row, key, clock
            self.stats["live"] += 1
            self.stats["admitted"] += 1
            rows[-1], fresh[-1] = row, True
        return np.array(rows), np.array(fresh)

    def release(self, indices, zero_rows):
        released = []
        for row in indices:
            if row < self.capacity and row in self.row_key and row in zero_rows:
                self._unbind(row)
                self.free.append(row)
                self.stats["released"] += 1
                released.append(row)
        return released


def _keys(rng, n):
    """Hashed-looking int64 ids: negatives and values above 2^62 included."""
    return rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64)


@pytest.mark.parametrize("on_full", ["drop", "evict_lru"])
@pytest.mark.parametrize("min_count", [1, 3])
def test_index_matches_the_model_on_random_streams(on_full, min_count, rng):
    capacity = int(rng.integers(4, 40))
    universe = _keys(rng, int(capacity * rng.uniform(1.5, 4)))
    # Room for every key's sightings (the model never forgets them).
    layer = DynamicEmbedding(2, capacity, min_count=min_count, on_full=on_full,
                             pending_capacity=len(universe))
    layer.build()
    slot = tf.Variable(tf.ones([capacity + 1, 2]))
    model = IndexModel(capacity, min_count, on_full)
    fused = ops.fused_ops()
    for step in range(40):
        ids = universe[rng.zipf(1.3, size=int(rng.integers(0, 12))) % len(universe)]
        rows, fresh = fused.group_lasso_dynamic_lookup(
            *layer.index_handles(), tf.constant(ids, tf.int64), min_count=min_count,
            on_full=on_full)
        want_rows, want_fresh = model.lookup(ids.tolist())
        np.testing.assert_array_equal(rows.numpy(), want_rows.reshape(rows.shape))
        np.testing.assert_array_equal(fresh.numpy(), want_fresh.reshape(fresh.shape))
        if step % 3 == 2 and model.row_key:  # the update zeroed some live rows
            zero = set(rng.choice(sorted(model.row_key), size=int(rng.integers(1, 4))).tolist())
            pool = rng.normal(size=(capacity + 1, 2)).astype(np.float32)
            pool[sorted(zero)] = 0
            layer.embeddings.assign(pool)
            indices = rng.integers(0, capacity + 1, size=8).tolist() + sorted(zero)
            released = fused.group_lasso_dynamic_release(
                *layer.index_handles(), layer.embeddings.value.handle, [slot.handle],
                tf.constant(indices, tf.int64), T=tf.float32)
            want = model.release(indices, zero)
            assert released.numpy().tolist() == want
            assert np.all(slot.numpy()[want] == 0)
        stats = layer.table_stats()
        assert {k: stats[k] for k in model.stats} == model.stats
        assert stats["live"] == len(model.row_key) <= capacity


def test_a_full_pending_array_forgets_its_sightings(rng):
    """More ids pending than pending_capacity: the sightings are forgotten
    (the array is emptied), lookups go on, ids seen min_count times in a row
    are still admitted."""
    layer = DynamicEmbedding(2, capacity=64, min_count=2, pending_capacity=4)
    for _ in range(6):
        layer(tf.constant(_keys(rng, 40)))  # 40 new ids a call: the array (8 slots) fills
    assert layer.table_stats()["admitted"] == 0
    repeated = tf.constant(np.repeat(_keys(rng, 3), 2))
    rows = layer(repeated)
    assert layer.table_stats()["admitted"] == 3 and layer.table_stats()["live"] == 3
    assert np.all(np.any(rows.numpy()[1::2] != 0, axis=1))


def test_optimizer_frees_zeroed_rows_and_a_returning_id_starts_fresh(rng):
    layer = DynamicEmbedding(3, capacity=8, embeddings_initializer="ones")
    ids = tf.constant([11, -5, 2**62 + 3], tf.int64)
    opt = gl.GroupAdam(learning_rate=0.1, l21=1e-3)

    def step(batch, weight):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(batch) * weight)
        opt.apply(tape.gradient(loss, [layer.embeddings]), [layer.embeddings])

    step(ids, tf.constant([[1.0], [1.0], [1.0]]))
    assert layer.table_stats()["live"] == 3
    opt.set_strength("l21", 100.0)  # every row the next step touches goes to zero
    step(ids[:1], tf.constant([[1.0]]))
    stats = layer.table_stats()
    assert stats["released"] == 1 and stats["live"] == 2
    row = int(np.flatnonzero(np.all(layer.embeddings.numpy() == 0, axis=1))[0])
    assert all(np.all(opt.get_slot(layer.embeddings, s).numpy()[row] == 0)
               for s in opt._group_slot_names)
    opt.set_strength("l21", 0.0)
    out = layer(ids[:1]).numpy()  # it comes back: a new row from the initializer
    np.testing.assert_array_equal(out, np.ones((1, 3)))
    assert layer.table_stats()["admitted"] == 4


def test_zero_strengths_train_like_a_fixed_embedding(rng):
    """Same ids, mapped densely for the fixed table: the same predictions
    after 20 fit-like steps (float32, 1e-6)."""
    universe = _keys(rng, 30)
    batches = [universe[rng.integers(0, 30, size=16)] for _ in range(20)]
    targets = [rng.normal(size=(16, 1)).astype(np.float32) for _ in range(20)]
    dense_id = {k: i for i, k in enumerate(universe.tolist())}
    init = keras.initializers.Constant(0.05)
    dynamic = DynamicEmbedding(4, capacity=64, embeddings_initializer=init)
    fixed = keras.layers.Embedding(30, 4, embeddings_initializer=init)
    heads = [keras.layers.Dense(1, kernel_initializer="ones") for _ in range(2)]
    opts = [gl.GroupAdam(learning_rate=0.05) for _ in range(2)]
    outs = []
    for k, (emb, head, opt) in enumerate(zip([dynamic, fixed], heads, opts)):
        for ids, y in zip(batches, targets):
            x = ids if k == 0 else np.array([dense_id[i] for i in ids.tolist()])
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((head(emb(x)) - y) ** 2)
            variables = [emb.embeddings] + head.trainable_weights
            opt.apply(tape.gradient(loss, variables), variables)
        outs.append(head(emb(batches[0] if k == 0 else
                             np.array([dense_id[i] for i in batches[0].tolist()]))).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)


def test_shard_of_an_id_is_fixed_and_spreads_structured_ids(rng):
    """Sequential ids, ids sharing their low 32 bits and random ids: every
    shard within 5% of its share; the same id always in the same shard."""
    shard = ops.fused_ops().group_lasso_dynamic_shard
    num_shards = int(rng.integers(2, 9))
    n = 40_000
    for ids in (np.arange(n) + int(rng.integers(-2**62, 2**62)), np.arange(n) << 32,
                rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64)):
        shards = shard(tf.constant(ids, tf.int64), num_shards=num_shards).numpy()
        counts = np.bincount(shards, minlength=num_shards)
        assert counts.size == num_shards and shards.min() >= 0
        np.testing.assert_allclose(counts, n / num_shards, rtol=0.05)
        again = shard(tf.constant(ids[::-1], tf.int64), num_shards=num_shards).numpy()
        np.testing.assert_array_equal(again[::-1], shards)


@pytest.mark.parametrize("on_full", ["drop", "evict_lru"])
def test_a_sharded_table_trains_like_one_table(on_full, rng):
    """With a constant initializer and room for every id, each id's row,
    the counters and the predictions of 2-4 shards equal one table's, group
    lasso releases included (float32, 1e-6)."""
    num_shards = int(rng.integers(2, 5))
    universe = _keys(rng, 60)
    batches = [universe[rng.integers(0, 60, size=(32, 3))] for _ in range(15)]
    targets = [rng.normal(size=(32, 1)).astype(np.float32) for _ in range(15)]
    init = keras.initializers.Constant(0.05)
    results = []
    for shards in (1, num_shards):
        keras.utils.set_random_seed(0)
        layer = DynamicEmbedding(4, capacity=128 * shards, embeddings_initializer=init,
                                 on_full=on_full, num_shards=shards)
        head = keras.layers.Dense(1, kernel_initializer="ones")
        opt = gl.GroupAdam(learning_rate=0.05, l1=1e-4, l21=4e-3)
        for ids, y in zip(batches, targets):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((head(keras.layers.Flatten()(layer(ids))) - y) ** 2)
            variables = layer.pools + head.trainable_weights
            opt.apply(tape.gradient(loss, variables), variables)
        assert len(layer.shards) == shards and len(layer.pools) == shards
        keys, rows = layer.live_rows()
        order = np.argsort(keys)
        stats = layer.table_stats()
        stats.pop("capacity")
        results.append((keys[order], rows[order], stats,
                        head(keras.layers.Flatten()(layer(batches[0], training=False))).numpy()))
    (k1, r1, s1, p1), (k2, r2, s2, p2) = results
    assert s1["released"] > 0 and s1["live"] > 0, s1  # the group lasso freed some rows
    assert s1 == s2
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_allclose(r1, r2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7)


def _model(capacity, num_shards=1):
    inputs = keras.Input(shape=(2,), dtype="int64")
    x = DynamicEmbedding(4, capacity=capacity, on_full="evict_lru", num_shards=num_shards,
                         name="dyn")(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=gl.GroupAdam(learning_rate=0.05, l21=2e-3), loss="mse")
    return model


@pytest.mark.parametrize("num_shards", [1, 2])
def test_checkpoint_and_keras_file_restore_index_pool_and_slots(num_shards, rng, tmp_path):
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    x = _keys(rng, 40)[rng.integers(0, 40, size=(256, 2))]
    y = rng.normal(size=(256, 1)).astype(np.float32)
    model = _model(24, num_shards)
    model.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = ckpt.write(str(tmp_path / "ckpt"))
    model.save(str(tmp_path / "m.keras"))
    stats = model.get_layer("dyn").table_stats()
    logs = {}
    logger = gl.sparsity.SparsityLogger()
    logger.set_model(model)
    logger.on_epoch_end(0, logs)
    assert logs["table/dyn/live"] == stats["live"] and logs["table/dyn/capacity"] == 24
    assert len(model.get_layer("dyn").shards) == num_shards
    assert logs["sparsity/dyn"] == pytest.approx(
        1 - stats["live"] / (stats["admitted"] - stats["evicted"]))
    assert stats["live"] > 0
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert loaded.get_layer("dyn").table_stats() == stats
    np.testing.assert_array_equal(loaded.predict(x[:64], verbose=0),
                                  model.predict(x[:64], verbose=0))
    # Resume from the checkpoint == uninterrupted, bit for bit.
    model.fit(x[128:], y[128:], batch_size=32, epochs=1, verbose=0, shuffle=False)
    again = _model(24, num_shards)
    again.fit(x[:1], y[:1], batch_size=1, epochs=1, verbose=0)  # build everything
    tf.train.Checkpoint(model=again, optimizer=again.optimizer).read(path).expect_partial()
    again.fit(x[128:], y[128:], batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_bad_arguments_name_themselves():
    for kwargs, name in [(dict(output_dim=0, capacity=4), "output_dim"),
                         (dict(output_dim=2, capacity=0), "capacity"),
                         (dict(output_dim=2, capacity=4, on_full="lru"), "on_full"),
                         (dict(output_dim=2, capacity=4, min_count=0), "min_count"),
                         (dict(output_dim=2, capacity=4, num_shards=0), "num_shards")]:
        with pytest.raises(ValueError, match=name):
            DynamicEmbedding(**kwargs)
    layer = DynamicEmbedding(2, capacity=4)
    with pytest.raises(TypeError, match="integers"):
        layer(tf.constant([1.5]))
    with pytest.raises(ValueError, match="jit_compile"):
        tf.function(lambda x: layer(x), jit_compile=True)(tf.constant([1], tf.int64))
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"),
                     tf.distribute.MirroredStrategy(["/cpu:0"])):
        with strategy.scope():
            with pytest.raises(ValueError, match="ParameterServerStrategy"):
                DynamicEmbedding(2, capacity=4).build()


def test_threads_looking_up_and_updating_one_table_keep_it_consistent(rng):
    layer = DynamicEmbedding(2, capacity=64, on_full="evict_lru")
    layer.build()
    opt = gl.GroupAdam(learning_rate=0.1, l21=5e-2)
    opt.build([layer.embeddings])
    keys = _keys(rng, 200)
    errors = []

    def work(seed):
        local = np.random.default_rng(seed)
        try:
            for _ in range(25):
                ids = tf.constant(keys[local.integers(0, 200, size=16)])
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(layer(ids))
                opt.apply(tape.gradient(loss, [layer.embeddings]), [layer.embeddings])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(int(rng.integers(2**31)),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    index = {k: getattr(layer, k).numpy() for k in ("key_table", "row_state")}
    table = index["key_table"]
    bound = table[table[:, 1] != 0]
    row_state = index["row_state"]
    live_rows = np.flatnonzero(row_state[:, 1] != 0)
    # Every key of the table points at a live row holding that key, and back.
    assert sorted(bound[:, 1] - 1) == sorted(live_rows.tolist())
    np.testing.assert_array_equal(row_state[bound[:, 1] - 1, 0], bound[:, 0])
    assert layer.table_stats()["live"] == len(live_rows)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_export_writes_a_compact_static_table(num_shards, rng, tmp_path):
    """The served model: stock ops only, predictions bit-equal to the
    dynamic model's inference (one table for all shards); unknown and
    released ids read zeros."""
    from group_lasso_tf.export import export_pruned

    keras.utils.set_random_seed(int(rng.integers(2**31)))
    x = _keys(rng, 60)[rng.integers(0, 60, size=(256, 2))]
    y = rng.normal(size=(256, 1)).astype(np.float32)
    model = _model(32, num_shards)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    layer = model.get_layer("dyn")
    keys, _ = layer.live_rows()
    report = export_pruned(model, str(tmp_path / "served"))
    assert report.tables["dyn"][0] == 32 and report.tables["dyn"][1] <= len(keys)
    served = tf.saved_model.load(str(tmp_path / "served"))
    probe = np.concatenate([x[:64], _keys(rng, 2 * 8).reshape(8, 2)])  # unknown ids too
    ours = served.serve(tf.constant(probe)).numpy()
    np.testing.assert_array_equal(ours, model.predict(probe, verbose=0))
    graph = served.signatures["serving_default"].graph
    ops_used = {op.type for op in graph.get_operations()}
    ops_used |= {node.op for f in graph.as_graph_def().library.function for node in f.node_def}
    assert not any(t.startswith(("GroupLasso", "ResourceSparseApplyGroup")) for t in ops_used)


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_sparsity_target_steers_a_dynamic_table(target, rng):
    """SparsityTarget on a DynamicEmbedding: after the last update the freed
    ids are the requested fraction of the ids given a row (to one row), or
    more if the steps had freed more already; the rows it zeroes are freed
    at once."""
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    universe = _keys(rng, int(rng.integers(300, 800)))
    index = np.minimum(rng.zipf(1.3, size=(2048, 3)), len(universe)) - 1
    x = universe[index]
    y = rng.normal(size=len(universe))[index].sum(axis=1, keepdims=True) > 0
    inputs = keras.Input(shape=(3,), dtype="int64")
    layer = DynamicEmbedding(8, capacity=1024, name="dyn")
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, out)
    model.compile(optimizer=gl.GroupAdam(learning_rate=0.01, l21=1e-4), loss="binary_crossentropy")
    control = gl.sparsity.SparsityTarget(target, update_every=8)
    model.fit(x, y.astype(np.float32), batch_size=128, epochs=2, verbose=0, callbacks=[control])
    h = control.history
    stats = layer.table_stats()
    assert stats["released"] > 0
    zero, counted = (int(v) for v in gl.sparsity._zero_and_counted(model.optimizer,
                                                                   layer.embeddings))
    # The law only adds zero rows: a freed row stays freed until its id comes
    # back, so updates that freed more than the reference leave it above.
    expected = max(h["reference"][-1], h["drifted"][-1])
    assert h["reference"][-1] == pytest.approx(target)
    assert abs(h["sparsity"][-1] - expected) <= 1 / counted + 1e-12, (h, counted)
    assert zero == stats["admitted"] - stats["evicted"] - stats["live"]
    # No live row is zero: the rows the law zeroed were freed.
    keys, rows = layer.live_rows()
    assert not np.any(np.all(rows == 0, axis=1))
