"""The multi-table sparse step (issue 17): the lazy sparse steps of all the
tables of an `apply` go through one ResourceSparseApply<rule>Multi op, with
results equal bit for bit to one op per table (same thread count), on
generated families of tables (shapes, dtypes, index dtypes, duplicates,
empty batches, per-table strengths), fresh every run; a bad id fails the
whole step before any write, naming its table."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from group_lasso_tf import ops

import harness

pytestmark = pytest.mark.skipif(not ops.fused_available(), reason="op library not built")

FACTORIES = {
    "adam": lambda **k: gl.GroupAdam(learning_rate=0.01, **k),
    "amsgrad": lambda **k: gl.GroupAdam(learning_rate=0.01, amsgrad=True, **k),
    "adagrad": lambda **k: gl.GroupAdagrad(learning_rate=0.1, **k),
    "momentum": lambda **k: gl.GroupMomentum(learning_rate=0.05, momentum=0.9, **k),
    "ftrl": lambda **k: gl.GroupFtrl(learning_rate=0.1, **k),
    "rmsprop": lambda **k: gl.GroupRMSprop(learning_rate=0.01, momentum=0.5, centered=True, **k),
}


def _family(rng):
    """Tables of random shapes and dtypes, and `steps` batches of gradients
    for each: Zipf-like ids with duplicates, sometimes an empty batch."""
    tables = []
    for t in range(int(rng.integers(2, 7))):
        rows = int(rng.integers(1, 60))
        shape = (rows,) + tuple(int(d) for d in rng.integers(1, 5, size=rng.integers(0, 3)))
        # The first two share their dtypes, so that one multi-table op runs.
        dtype = ["float32", "float64"][int(rng.integers(2))] if t != 1 else tables[0]["init"].dtype
        index_dtype = ([np.int32, np.int64][int(rng.integers(2))] if t != 1
                       else tables[0]["index_dtype"])
        tables.append(dict(name=f"table_{t}", init=rng.normal(size=shape).astype(dtype),
                           index_dtype=index_dtype))
    steps = []
    for _ in range(int(rng.integers(3, 7))):
        grads = []
        for table in tables:
            rows = table["init"].shape[0]
            n = 0 if rng.random() < 0.15 else int(rng.integers(1, 3 * rows + 2))
            ids = np.minimum(rng.zipf(1.3, size=n) - 1, rows - 1).astype(table["index_dtype"])
            values = rng.normal(size=(n,) + table["init"].shape[1:]).astype(table["init"].dtype)
            grads.append((values, ids))
        steps.append(grads)
    return tables, steps


def _train(name, tables, steps, batched, strengths):
    variables = [keras.Variable(t["init"], name=t["name"]) for t in tables]
    optimizer = FACTORIES[name](l1=1e-3, l21=2e-2, per_variable=strengths)
    optimizer._multi_table_steps = batched
    optimizer.build(variables)

    @tf.function
    def apply(grads):
        optimizer.apply([tf.IndexedSlices(v, i, tf.shape(var, out_type=i.dtype))
                         for (v, i), var in zip(grads, variables)], variables)

    for grads in steps:
        apply([(tf.constant(v), tf.constant(i)) for v, i in grads])
    graph_ops = {op.type for op in apply.get_concrete_function(
        [(tf.constant(v), tf.constant(i)) for v, i in steps[0]]).graph.get_operations()}
    slots = [optimizer.get_slot(v, s).numpy() for v in variables
             for s in optimizer._group_slot_names]
    return [v.numpy() for v in variables], slots, graph_ops


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_multi_table_step_equals_one_op_per_table(name, rng):
    tables, steps = _family(rng)
    strengths = {t["name"]: {"l21": float(rng.uniform(0, 0.05)), "l1": float(rng.uniform(0, 1e-2))}
                 for t in tables if rng.random() < 0.6}
    weights, slots, graph_ops = _train(name, tables, steps, True, strengths)
    ref_weights, ref_slots, ref_ops = _train(name, tables, steps, False, strengths)
    assert any(op.endswith("Multi") for op in graph_ops), sorted(graph_ops)
    assert not any(op.endswith("Multi") for op in ref_ops)
    for a, b in zip(weights + slots, ref_weights + ref_slots):
        np.testing.assert_array_equal(a, b)
    # The step did something, and the group lasso zeroed rows somewhere.
    assert any(not np.array_equal(w, t["init"]) for w, t in zip(weights, tables))


@pytest.mark.parametrize("name", ["adam", "ftrl"])
def test_a_table_with_most_of_the_ids_steps_like_one_op_per_table(name, rng):
    """A table whose batch is most of a step's ids (a multi-hot field beside
    one-hot ones): the one-table op splits a batch of 4,096 ids or more by
    id hash between the intra-op threads, the multi-table op sums each table
    whole; both sum in batch order, so the step is equal bit for bit."""
    rows = int(rng.integers(300, 3000))
    width = tuple(int(d) for d in rng.integers(1, 9, size=rng.integers(0, 2)))
    dtype = ["float32", "float64"][int(rng.integers(2))]
    index_dtype = [np.int32, np.int64][int(rng.integers(2))]
    tables = [dict(name=f"table_{t}", index_dtype=index_dtype,
                   init=rng.normal(size=(rows if t == 0 else int(rng.integers(1, 60)),) + width)
                   .astype(dtype))
              for t in range(int(rng.integers(2, 5)))]
    steps = []
    for _ in range(int(rng.integers(2, 4))):
        grads = []
        for t, table in enumerate(tables):
            table_rows = table["init"].shape[0]
            n = int(rng.integers(2 * 2048, 10 * 2048)) if t == 0 else int(rng.integers(0, 200))
            ids = np.minimum(rng.zipf(float(rng.uniform(1.1, 1.6)), size=n) - 1, table_rows - 1)
            ids = rng.permutation(table_rows)[ids].astype(index_dtype)  # hot ids spread out
            grads.append((rng.normal(size=(n,) + width).astype(dtype), ids))
        steps.append(grads)
    strengths = {"table_0": {"l21": float(rng.uniform(0, 0.05))}}
    weights, slots, graph_ops = _train(name, tables, steps, True, strengths)
    ref_weights, ref_slots, _ = _train(name, tables, steps, False, strengths)
    assert any(op.endswith("Multi") for op in graph_ops), sorted(graph_ops)
    for a, b in zip(weights + slots, ref_weights + ref_slots):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(weights[0], tables[0]["init"])


def _hash_slot(ids, bits):
    """The slot cc/group_lasso/apply.h's SumDuplicateRows hashes an id to:
    the top `bits` bits of its hash."""
    return harness.hash_id(ids) >> np.uint64(64 - bits)


@pytest.mark.parametrize("name", ["adam", "ftrl"])
def test_ids_that_collide_in_the_hash_table_are_summed_like_one_op_per_table(name, rng):
    """The multi-table op groups a table's ids with a hash table that starts
    at 16 slots and doubles when half full. Ids that all hash to the last of
    64 slots also hash to the last of 16 and of 32: every lookup probes past
    the others and wraps around to slot 0, and with up to 20 distinct ids the
    table grows twice mid-batch and re-places them. With duplicates among
    them, in a random order, the step still equals one op per table bit for
    bit. (If the hash changes, this stays a valid test, only a less
    adversarial one.)"""
    n = int(rng.integers(24, 64))  # positions per batch
    bits = 6
    rows = 4096
    candidates = np.arange(rows)
    colliding = candidates[_hash_slot(candidates, bits) == (1 << bits) - 1]
    assert colliding.size >= 20
    index_dtype = [np.int32, np.int64][int(rng.integers(2))]  # one op: one index dtype
    tables = [dict(name=f"table_{t}", init=rng.normal(size=(rows, 3)).astype("float32"),
                   index_dtype=index_dtype) for t in range(2)]
    steps = []
    for _ in range(3):
        grads = []
        for table in tables:
            distinct = rng.choice(colliding, size=int(rng.integers(4, 21)), replace=False)
            ids = rng.choice(distinct, size=n).astype(table["index_dtype"])
            values = rng.normal(size=(n, 3)).astype("float32")
            grads.append((values, ids))
        steps.append(grads)
    weights, slots, graph_ops = _train(name, tables, steps, True, None)
    ref_weights, ref_slots, _ = _train(name, tables, steps, False, None)
    assert any(op.endswith("Multi") for op in graph_ops), sorted(graph_ops)
    for a, b in zip(weights + slots, ref_weights + ref_slots):
        np.testing.assert_array_equal(a, b)
    touched = np.unique(np.concatenate([ids for grads in steps for _, ids in grads[:1]]))
    assert not np.array_equal(weights[0][touched], tables[0]["init"][touched])


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_slot_reads_in_the_same_step_are_ordered_around_the_update(name, rng):
    """The multi-table op reaches the slots through one stacked tensor of
    handles. A step that also reads a slot directly, before and after
    `apply`, gets automatic control dependencies on the op all the same
    (the resolver in optimizers/base.py): the first read is a control input
    of the op, the op a control input of the second, and the values read are
    those from before and after the update."""
    from group_lasso_tf.optimizers.base import resource_variable

    n = int(rng.integers(2, 5))
    tables = [keras.Variable(rng.normal(size=(int(rng.integers(4, 20)), 3)).astype("float32"),
                             name=f"t{i}") for i in range(n)]
    optimizer = FACTORIES[name](l21=1e-3)
    optimizer.build(tables)
    watched = int(rng.integers(n))
    slot = resource_variable(
        optimizer.get_slot(tables[watched], optimizer._group_slot_names[0]), "slot")

    @tf.function
    def step(grads):
        before = slot.read_value()
        optimizer.apply(grads, tables)
        after = slot.read_value()
        return before, after

    def grads():
        out = []
        for t in tables:
            ids = rng.integers(0, t.shape[0], size=5)
            out.append(tf.IndexedSlices(tf.constant(rng.normal(size=(5, 3)), tf.float32),
                                        tf.constant(ids), tf.constant(t.shape, tf.int64)))
        return out

    for _ in range(3):
        start = slot.numpy()
        before, after = step(grads())
        np.testing.assert_array_equal(before.numpy(), start)
        np.testing.assert_array_equal(after.numpy(), slot.numpy())
        assert not np.array_equal(after.numpy(), start)
    graph = step.get_concrete_function(grads()).graph
    multi = [op for op in graph.get_operations() if op.type.endswith("Multi")]
    assert len(multi) == 1
    (inside,) = [inside for outside, inside in graph.captures if outside is slot.handle]
    reads = [op for op in graph.get_operations()
             if op.type == "ReadVariableOp" and op.inputs[0] is inside]
    assert len(reads) == 2
    first, second = sorted(reads, key=lambda op: multi[0] in op.control_inputs)
    assert first in multi[0].control_inputs
    assert multi[0] in second.control_inputs


def test_a_saved_training_step_with_the_multi_table_op_loads_and_trains_alike(rng, tmp_path):
    """tf.saved_model.save exports a tf.Module's training function: there
    the slots are stacked inside the function (an exported function may not
    capture a bare tensor of handles). The loaded step trains exactly like
    the original from the same state."""
    n = int(rng.integers(2, 5))
    tables = [keras.Variable(rng.normal(size=(int(rng.integers(5, 30)), 3)).astype("float32"),
                             name=f"t{i}") for i in range(n)]
    optimizer = gl.GroupAdam(learning_rate=0.05, l21=1e-2)
    optimizer.build(tables)

    class Trainer(tf.Module):
        def __init__(self):
            super().__init__()
            self.tables, self.optimizer = tables, optimizer

        @tf.function(input_signature=[tf.TensorSpec([n, None], tf.int64),
                                      tf.TensorSpec([n, None, 3], tf.float32)])
        def train(self, ids, values):
            grads = [tf.IndexedSlices(values[t], ids[t], tf.shape(self.tables[t], tf.int64))
                     for t in range(n)]
            self.optimizer.apply(grads, self.tables)
            return tf.constant(0)

    trainer = Trainer()
    assert any(op.type.endswith("Multi") for op in trainer.train.get_concrete_function()
               .graph.get_operations())
    tf.saved_model.save(trainer, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    for _ in range(2):
        ids = tf.constant(np.stack([rng.integers(0, t.shape[0], size=6) for t in tables]))
        values = tf.constant(rng.normal(size=(n, 6, 3)), tf.float32)
        trainer.train(ids, values)
        loaded.train(ids, values)
    for original, restored in zip(tables, loaded.tables):
        np.testing.assert_array_equal(original.numpy(), restored.numpy())


def test_slots_not_stacked_as_slots_by_tables_are_refused_before_any_write(rng):
    """The op's `slots` input must be [slots per table, tables]: handles
    stacked the other way round (or too few) fail with an error naming it,
    and nothing is written."""
    n = 2
    variables = [tf.Variable(rng.normal(size=(4, 3)).astype("float32")) for _ in range(n)]
    slots = [[tf.Variable(tf.zeros((4, 3))) for _ in range(n)] for _ in range(3)]  # m, v, linear
    op = ops.apply_op("ResourceSparseApplyGroupAdamMulti")
    scalar = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    before = [v.numpy() for v in variables]
    for wrong in (tf.stack([tf.stack([s[t].handle for s in slots]) for t in range(n)]),
                  tf.stack([tf.stack([s[t].handle for t in range(n)]) for s in slots[:2]])):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"slots must be a \[3, N = 2\]"):
            op([v.handle for v in variables], wrong, scalar(0.1), [scalar(0.0)] * n,
               [scalar(0.1)] * n, [scalar(0.0)] * n,
               *[scalar(x) for x in (0.9, 0.999, 0.9, 0.999, 1e-7)],
               [tf.ones((1, 3))] * n, [tf.constant([1])] * n)
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_stack_handles_stacks_row_major_and_refuses_a_bad_row_count(rng):
    """GroupLassoStackHandles, which makes the `slots` input: handle i at
    [i // columns, i % columns]; rows that do not divide N are an error
    naming both."""
    rows, columns = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    variables = [tf.Variable(tf.fill([2], float(i))) for i in range(rows * columns)]
    stacked = ops.fused_ops().group_lasso_stack_handles([v.handle for v in variables], rows=rows)
    assert stacked.shape == (rows, columns) and stacked.dtype == tf.resource
    for i in range(rows * columns):
        value = tf.raw_ops.ReadVariableOp(resource=stacked[i // columns, i % columns],
                                          dtype=tf.float32)
        np.testing.assert_array_equal(value.numpy(), [float(i), float(i)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"rows = 2 must divide N = 3"):
        ops.fused_ops().group_lasso_stack_handles([v.handle for v in variables[:1]] * 3, rows=2)


def test_a_bad_id_fails_the_whole_step_naming_its_table_before_any_write(rng):
    """Three tables, the second with an id out of range: an error naming it,
    and no table or slot changed."""
    variables = [keras.Variable(rng.normal(size=(rows, 3)).astype("float32"), name=f"tab{rows}")
                 for rows in (5, 7, 9)]
    optimizer = gl.GroupAdam(learning_rate=0.1, l21=1e-2)
    optimizer.build(variables)
    before = [v.numpy() for v in variables]
    slots = [optimizer.get_slot(v, s) for v in variables for s in optimizer._group_slot_names]
    slots_before = [s.numpy() for s in slots]
    grads = [tf.IndexedSlices(tf.ones((2, 3)), tf.constant([0, 1]), tf.constant([5, 3])),
             tf.IndexedSlices(tf.ones((2, 3)), tf.constant([3, 7]), tf.constant([7, 3])),
             tf.IndexedSlices(tf.ones((1, 3)), tf.constant([2]), tf.constant([9, 3]))]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tab7.*indices\[1\] = 7"):
        tf.function(lambda: optimizer.apply(grads, variables))()
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    # (One op per table wrote the tables before the bad one. Keras's step
    # counter still counts the failed step: it is incremented apart.)
    for s, b in zip(slots, slots_before):
        np.testing.assert_array_equal(s.numpy(), b)


def test_dynamic_table_shards_take_the_multi_table_path(rng):
    """A 3-shard DynamicEmbedding with LRU eviction and releases: the same
    pools, index, slots and counters through the multi-table op as through
    one op per shard, bit for bit."""
    from group_lasso_tf.layers import DynamicEmbedding

    keys = rng.integers(-2**62, 2**62, size=80)
    batches = [keys[rng.integers(0, 80, size=48)] for _ in range(12)]
    results = []
    for batched in (True, False):
        keras.utils.set_random_seed(7)
        layer = DynamicEmbedding(4, capacity=36, on_full="evict_lru", num_shards=3,
                                 embeddings_initializer=keras.initializers.RandomNormal(seed=1))
        optimizer = gl.GroupAdam(learning_rate=0.05, l1=1e-3, l21=3e-2)
        optimizer._multi_table_steps = batched
        weight = tf.constant([1.0, -2.0, 0.5, 3.0])

        @tf.function
        def step(ids):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(ids)) * weight)
            optimizer.apply(tape.gradient(loss, layer.pools), layer.pools)

        for ids in batches:
            step(tf.constant(ids))
        graph_ops = {op.type for op in step.get_concrete_function(
            tf.constant(batches[0])).graph.get_operations()}
        assert any(op.endswith("Multi") for op in graph_ops) == batched
        results.append([keras.ops.convert_to_numpy(w) for w in layer.weights] +
                       [optimizer.get_slot(p, s).numpy() for p in layer.pools
                        for s in optimizer._group_slot_names])
        stats = layer.table_stats()
    assert stats["released"] > 0 and stats["evicted"] > 0, stats
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def _optimizer_op_counts(optimizer, tables, dense):
    """{op type: count} of the ops in `optimizer`'s name scope in the graph
    of one apply over `tables` (sparse gradients) and `dense` variables."""
    variables = tables + dense
    optimizer.build(variables)

    @tf.function
    def step():
        grads = [tf.IndexedSlices(tf.ones([3, 4]), tf.constant([0, 2, 0]), tf.constant([5, 4]))
                 for _ in tables] + [tf.ones_like(v) for v in dense]
        optimizer.apply(grads, variables)

    counts = {}
    for op in step.get_concrete_function().graph.get_operations():
        if op.name.startswith(optimizer.name + "/"):
            counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def test_step_scalars_are_made_once_per_step_not_per_table(rng):
    """The learning rate and the rule's hyperparameters (Adam's bias
    corrections) are made once per step and dtype, and the strengths of all
    tables come from one read of the optimizer's strength table: adding
    tables adds no op to the step beyond their own inputs."""
    counts = []
    dense = [keras.Variable(np.ones((4, 3), "float32"), name="kernel")]
    for n in (int(rng.integers(2, 5)), int(rng.integers(6, 12))):
        tables = [keras.Variable(np.ones((5, 4), "float32"), name=f"t{i}") for i in range(n)]
        optimizer = gl.GroupAdam(learning_rate=0.01, l1=1e-4, l21=1e-3, regularize_dense=True,
                                 per_variable={"t1": {"l21": 2e-3}})
        counts.append((n, _optimizer_op_counts(optimizer, tables, dense)))
    (n1, small), (n2, large) = counts
    assert small.get("ResourceSparseApplyGroupAdamMulti") == large.get(
        "ResourceSparseApplyGroupAdamMulti") == 1
    for kind in set(small) | set(large):
        if kind not in ("Placeholder", "Const"):
            assert small.get(kind) == large.get(kind), (kind, small, large)
    assert small["Pow"] == 2  # beta_1^t and beta_2^t, once


def test_one_multi_table_op_per_device(rng):
    """Tables on different devices never share an op (it runs where its
    variables are): one op per device, holding exactly that device's tables.
    Built in a graph, where a device need not exist to be named."""
    devices = ["/device:CPU:0", "/device:CPU:1"]
    placed = [devices[int(i)] for i in rng.integers(0, 2, size=int(rng.integers(4, 9)))]
    placed[:2] = devices  # both devices hold a table
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        for i, device in enumerate(placed):
            with tf.device(device):
                variables.append(keras.Variable(np.ones((5, 4), "float32"), name=f"t{i}"))
        optimizer = gl.GroupAdam(learning_rate=0.01, l21=1e-3)
        optimizer.build(variables)
        optimizer.apply([tf.IndexedSlices(tf.ones([3, 4]), tf.constant([0, 2, 0]),
                                          tf.constant([5, 4])) for _ in variables], variables)
    multi = [op for op in graph.get_operations() if op.type.endswith("Multi")]
    # (A device's only table takes the one-table op: on a CPU nothing is shared.)
    expected = sorted(n for n in (placed.count(d) for d in devices) if n > 1)
    assert sorted(op.get_attr("N") for op in multi) == expected
    for op in multi:
        handles = op.inputs[:op.get_attr("N")]
        assert len({h.device for h in handles}) == 1, [h.device for h in handles]


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


_HUGE_PAGES_SCRIPT = """
import os, sys
import numpy as np, tensorflow as tf, group_lasso_tf as gl

def huge_kb():
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(l.split()[1]) for l in f if l.startswith("AnonHugePages"))

assert gl.fused_available(), gl.ops.unavailable_reason()
rows = int(sys.argv[1])
kept = []  # alive, so that the second table's buffers cannot reuse the first's
for mode in ("0", "collapse"):
    os.environ["GROUP_LASSO_TF_HUGE_PAGES"] = mode
    table = tf.Variable(tf.zeros([rows, 16], tf.float64))
    optimizer = gl.GroupAdam(learning_rate=2.0**-7, l21=1e-3)
    optimizer.build([table])
    kept.append((table, optimizer))
    grad = tf.IndexedSlices(tf.ones([3, 16], tf.float64), tf.constant([0, 7, 7]),
                            tf.constant([rows, 16]))
    before = huge_kb()
    optimizer.apply([grad], [table])
    print(mode, huge_kb() - before)
"""


def test_large_tables_are_offered_huge_pages_and_step_as_small_ones(rng):
    """A host buffer of 4 MB or more that an op writes is offered transparent
    huge pages (cc/kernels/huge_pages.h): its steps still equal the float64
    reference; and in a fresh process (where no earlier allocation left huge
    pages behind), where the kernel backs memory with huge pages only on
    request (THP "madvise"), the first step gains them for the table and its
    slots with GROUP_LASSO_TF_HUGE_PAGES=collapse, and none with =0."""
    import np_reference as npr

    rows, dim = int(rng.integers(2**16, 2**17)), 16  # 8-16 MB per array in float64
    if _thp_mode() == "madvise":
        # The package this process imported (not one a working directory
        # would shadow: a source tree without the built op library).
        package_root = os.path.dirname(os.path.dirname(gl.__file__))
        proc = subprocess.run(
            [sys.executable, "-c", _HUGE_PAGES_SCRIPT, str(rows)], capture_output=True,
            text=True, timeout=300, cwd="/",
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=package_root))
        assert proc.returncode == 0, proc.stderr[-3000:]
        gained = dict(line.split() for line in proc.stdout.splitlines()[-2:])
        assert int(gained["0"]) == 0, proc.stdout
        # The aligned interiors of the table and its 3 slots, at least.
        assert int(gained["collapse"]) >= 4 * (rows * dim * 8 // 2**21 - 1) * 2048, proc.stdout
    hp = npr.BASE_HP["adam"]
    init = rng.normal(size=(rows, dim))
    table = keras.Variable(init, name="large_table")
    lr = 2.0**-7  # exact in float32, where Keras keeps the learning rate
    optimizer = gl.GroupAdam(learning_rate=lr, l1=1e-3, l21=2e-2, **hp)
    optimizer.build([table])
    want, state = init.copy(), npr.initial_state("adam", init.shape, hp)
    for t in range(1, 4):
        ids = rng.integers(0, rows, size=int(rng.integers(1, 200)))
        ids[: len(ids) // 3] = ids[0]  # duplicates
        values = rng.normal(size=(len(ids), dim))
        optimizer.apply([tf.IndexedSlices(tf.constant(values), tf.constant(ids),
                                          tf.constant([rows, dim], tf.int64))], [table])
        want, state = npr.sparse_step("adam", want, state, values, ids, lr, 1e-3, 2e-2, 0.0,
                                      hp, t)
    np.testing.assert_allclose(table.numpy(), want, rtol=1e-10, atol=1e-12)
