"""A CTR model on Criteo trained with ParameterServerStrategy and a sharded embedding table.

Start the parameter servers and workers with the package's launcher (it loads
the op library: the optimizers' updates run on the parameter servers, where
the table shards and their slots live), then this script as the chief:

    CLUSTER='{"chief": ["127.0.0.1:20000"], "worker": ["127.0.0.1:20001", "127.0.0.1:20002"],
              "ps": ["127.0.0.1:20003", "127.0.0.1:20004"]}'
    python -m group_lasso_tf.server --cluster "$CLUSTER" --job_name ps --task_index 0 &
    python -m group_lasso_tf.server --cluster "$CLUSTER" --job_name ps --task_index 1 &
    python -m group_lasso_tf.server --cluster "$CLUSTER" --job_name worker --task_index 0 &
    python -m group_lasso_tf.server --cluster "$CLUSTER" --job_name worker --task_index 1 &
    TF_CONFIG="{\"cluster\": $CLUSTER, \"task\": {\"type\": \"chief\", \"index\": 0}}" \\
        python examples/distributed_ps.py --mode ps --checkpoint /tmp/ps_ckpt

`--mode single` trains the same model in one process (no strategy), for
comparison. `--dynamic` replaces the table by a `DynamicEmbedding` over the
raw hashed ids (no vocabulary pass): under the strategy it is sharded by key,
one shard (pool, index, optimizer slots) per parameter server, and each
shard's lookups and updates run on its server; `--mode single --shards N`
makes the same shards in one process. The table (one row per feature id of all 26 fields) is split over
the parameter servers by `MinSizePartitioner`; each shard holds whole rows, so
the group lasso acts on it exactly as on the unsharded table. Steps are
scheduled with `ClusterCoordinator.schedule` and run on any worker;
`--sequential` waits for each before the next, which makes the data order that
of a single process. A checkpoint (`--checkpoint DIR`, every
`--checkpoint-every` steps and at the end) holds table, dense weights and
optimizer state; `--restore` resumes from the latest one.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ctr_data  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

EMBEDDING_DIM = 8


def make_optimizer(args):
    if args.optimizer == "ftrl":
        return gl.GroupFtrl(learning_rate=args.lr, l1=args.l1, l21=args.l21)
    return gl.GroupAdam(learning_rate=args.lr, l1=args.l1, l21=args.l21)


def build_variables(data):
    """The table (all fields' ids, offset per field) and the dense weights."""
    rng = np.random.default_rng(0)
    rows = int(sum(data.vocab_sizes))
    fields, num_dense = len(data.vocab_sizes), data.train.dense.shape[1]
    table = tf.Variable(rng.normal(0, 0.05, (rows, EMBEDDING_DIM)).astype("float32"), name="table")
    kernel = tf.Variable(rng.normal(0, 0.05, (fields * EMBEDDING_DIM + num_dense, 1)).astype("float32"),
                         name="kernel")
    bias = tf.Variable(np.zeros((1,), "float32"), name="bias")
    return table, kernel, bias


def build_dynamic_variables(data, args):
    """A DynamicEmbedding over the fields' hashed ids, and the dense weights."""
    table = gl.layers.DynamicEmbedding(
        EMBEDDING_DIM, capacity=args.capacity,
        embeddings_initializer=tf.keras.initializers.RandomNormal(0.0, 0.05, seed=0),
        num_shards=args.shards if args.mode == "single" else None)
    table.build(None)
    fields, num_dense = data.train.categorical.shape[1], data.train.dense.shape[1]
    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.normal(0, 0.05, (fields * EMBEDDING_DIM + num_dense, 1)).astype("float32"),
                         name="kernel")
    bias = tf.Variable(np.zeros((1,), "float32"), name="bias")
    return table, kernel, bias


def table_shards(table):
    if isinstance(table, gl.layers.DynamicEmbedding):
        return table.pools
    return list(table.variables) if hasattr(table, "variables") and not isinstance(
        table, tf.Variable) else [table]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ps", "single"], default="ps")
    parser.add_argument("--optimizer", choices=["adam", "ftrl"], default="adam")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--l1", type=float, default=1e-5)
    parser.add_argument("--l21", type=float, default=2e-4)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--restore", action="store_true")
    parser.add_argument("--restore-weights", metavar="DIR",
                        help="restore table and dense weights only, from the latest checkpoint in "
                             "DIR (written under any strategy and sharding)")
    parser.add_argument("--save-weights")
    parser.add_argument("--min-shard-bytes", type=int, default=64 << 10)
    parser.add_argument("--dynamic", action="store_true",
                        help="a DynamicEmbedding over hashed ids instead of the fixed table")
    parser.add_argument("--capacity", type=int, default=1 << 15,
                        help="rows of the DynamicEmbedding (all shards together)")
    parser.add_argument("--shards", type=int, default=1,
                        help="DynamicEmbedding shards with --mode single")
    args = parser.parse_args(argv)

    if args.dynamic:
        data = ctr_data.load_criteo_raw()
        data.train.categorical = gl.layers.fingerprint(
            tf.constant(data.train.categorical.astype(str))).numpy()
    else:
        data = ctr_data.load_criteo()
        offsets = tf.constant(np.concatenate([[0], np.cumsum(data.vocab_sizes)[:-1]]), tf.int32)

    if args.mode == "ps":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        num_ps = len(resolver.cluster_spec().as_dict()["ps"])
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=args.min_shard_bytes, max_shards=num_ps)
        strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    else:
        strategy, coordinator = tf.distribute.get_strategy(), None

    with strategy.scope():
        table, kernel, bias = (build_dynamic_variables(data, args) if args.dynamic
                               else build_variables(data))
        optimizer = make_optimizer(args)
        variables = table_shards(table) + [kernel, bias]
        optimizer.build(variables)
    checkpoint = tf.train.Checkpoint(table=table, kernel=kernel, bias=bias, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, args.checkpoint, max_to_keep=2) \
        if args.checkpoint else None
    if args.restore:
        checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    if args.restore_weights:
        weights = tf.train.Checkpoint(table=table, kernel=kernel, bias=bias)
        weights.restore(tf.train.latest_checkpoint(args.restore_weights)).expect_partial()
    shape = (f"DynamicEmbedding of {table.capacity} rows" if args.dynamic
             else f"table {table.shape}")
    print(f"mode {args.mode}: {shape} in {len(table_shards(table))} shard(s), "
          f"fused ops: {gl.fused_available()}, starting at step {int(optimizer.iterations.numpy())}",
          flush=True)
    if args.dynamic:  # where each shard's pool, index and optimizer slots live
        for shard in table.shards:
            held = [shard.embeddings, shard.key_table, shard.stats] + [
                optimizer.get_slot(shard.embeddings, name)
                for name in {"adam": ("m", "v"), "ftrl": ("accumulator", "linear")}[args.optimizer]]
            print(f"shard {shard.number}: " + " ".join(
                sorted({tf.DeviceSpec.from_string(v.value.device).to_string() for v in held})),
                flush=True)

    def replica_step(categorical, dense, label):
        with tf.GradientTape() as tape:
            if args.dynamic:
                embedded = table(categorical, training=True)
            else:
                embedded = tf.nn.embedding_lookup(table, categorical + offsets)
            h = tf.concat([tf.reshape(embedded, [tf.shape(label)[0], -1]), dense], axis=1)
            logit = tf.squeeze(tf.matmul(h, kernel) + bias, axis=1)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(label, logit))
        # Sharded table: one IndexedSlices per shard, ids local to the shard.
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function
    def train_step(categorical, dense, label):
        return strategy.run(replica_step, args=(categorical, dense, label))

    start = int(optimizer.iterations.numpy())
    results = []
    for step in range(start, start + args.steps):
        lo = (step * args.global_batch) % (len(data.train.label) - args.global_batch)
        batch = (tf.constant(data.train.categorical[lo:lo + args.global_batch]),
                 tf.constant(data.train.dense[lo:lo + args.global_batch]),
                 tf.constant(data.train.label[lo:lo + args.global_batch]))
        if coordinator is None:
            train_step(*batch)
        else:
            results.append(coordinator.schedule(train_step, args=batch))
            if args.sequential:
                coordinator.join()
        if manager and args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            if coordinator is not None:
                coordinator.join()
            manager.save(checkpoint_number=step + 1)
            print(f"checkpoint at step {step + 1}", flush=True)
    if coordinator is not None:
        coordinator.join()
    if manager:
        manager.save(checkpoint_number=int(optimizer.iterations.numpy()))

    if args.dynamic:  # the live ids' rows, by id
        keys, full_table = table.live_rows()
        order = np.argsort(keys)
        keys, full_table = keys[order], full_table[order]
        print(f"dynamic table: {table.table_stats()}", flush=True)
    else:
        keys = None
        full_table = tf.convert_to_tensor(table).numpy()
    zero = int(np.sum(np.all(full_table == 0, axis=1)))
    # Steps whose closure finished (each scheduled step, retried on another
    # worker if its worker failed). Keras's `iterations` counter can count
    # fewer when steps run concurrently: it is incremented as read-then-assign.
    finished = sum(1 for r in results if np.isfinite(r.fetch())) if results else args.steps
    print(f"done: {int(optimizer.iterations.numpy())} steps, {finished} steps finished, "
          f"row sparsity {zero}/{full_table.shape[0]}", flush=True)
    if args.save_weights:
        extra = {} if keys is None else dict(keys=keys, **{
            f"stat_{k}": v for k, v in table.table_stats().items()})
        np.savez(args.save_weights, table=full_table, kernel=kernel.numpy(), bias=bias.numpy(),
                 iterations=optimizer.iterations.numpy(), shards=len(table_shards(table)), **extra)
    if coordinator is not None:
        # The coordinator keeps channels to every task; after a worker failure,
        # closing them would block interpreter shutdown. All work is done.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
