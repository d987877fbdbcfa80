"""The Criteo DeepFM example under tf.distribute: one device, Mirrored, MultiWorkerMirrored.

    # one process, two replicas on two logical CPUs (or the local GPUs)
    python examples/distributed_train.py --strategy mirrored --logical-cpus 2

    # two worker processes on this machine (run both; TF_CONFIG names the cluster)
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' \
        python examples/distributed_train.py --strategy multi_worker
    (and the same with "index": 1)

The model and optimizer are built inside `strategy.scope()`. With `--loop fit`
(one_device, mirrored) Keras's `fit` does the rest; with `--loop custom` (the
only one for multi_worker: Keras 3.15's `fit` fails under
MultiWorkerMirroredStrategy with more than one worker, for any optimizer) a
`strategy.run` step computes gradients and calls `apply_gradients`. Either
way each replica works on its part of every global batch, sparse embedding
gradients arrive concatenated from all replicas (duplicate ids summed by the
fused op), and each replica updates its copy of the weights in place. Results
equal one-device training on the same global batches.

`--sparsity-target S` adds a `group_lasso_tf.sparsity.SparsityTarget` callback
to `fit`. `--save-weights F.npz` writes the final weights and optimizer variables (the
chief's), `--checkpoint DIR` writes a tf.train.Checkpoint of model and
optimizer, `--restore DIR` starts from one (written under any strategy).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_strategy(name, logical_cpus):
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def replica_batches(strategy, arrays, global_batch):
    """A distributed dataset giving replica k of step s the k-th part of global batch s."""
    parts = strategy.num_replicas_in_sync
    per_replica = global_batch // parts

    def dataset_fn(context):
        local = parts // context.num_input_pipelines
        first = context.input_pipeline_id * local
        steps = len(arrays[-1]) // global_batch

        def split(a):
            a = a[: steps * global_batch].reshape((steps, parts, per_replica) + a.shape[1:])
            # Element order: step by step, this worker's replicas one after another.
            return a[:, first:first + local].reshape((steps * local, per_replica) + a.shape[3:])

        return tf.data.Dataset.from_tensor_slices(tuple(split(a) for a in arrays))

    return strategy.distribute_datasets_from_function(dataset_fn)


def custom_loop(strategy, model, optimizer, features, labels, args):
    import keras

    import group_lasso_tf as gl

    dataset = replica_batches(strategy, list(features) + [labels], args.global_batch)

    @tf.function
    def train_step(batch):
        def step_fn(categorical, dense, label):
            def loss_fn():
                prediction = model([categorical, dense], training=True)
                per_example = keras.losses.binary_crossentropy(label[:, None], prediction)
                return tf.nn.compute_average_loss(per_example, global_batch_size=args.global_batch)

            variables = model.trainable_variables
            if isinstance(optimizer, gl.GroupAdaHessian):
                # The Hessian-diagonal estimates travel with the gradients.
                _, grads, hessians = gl.hessian.gradients_and_hessians(loss_fn, variables, optimizer)
                optimizer.apply(grads, variables, hessians=hessians)
                return
            with tf.GradientTape() as tape:
                loss = loss_fn()
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))

        strategy.run(step_fn, args=batch)

    for batch in dataset:
        train_step(batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=["one_device", "mirrored", "multi_worker"],
                        default="mirrored")
    parser.add_argument("--logical-cpus", type=int, default=2)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--l1", type=float, default=1e-5)
    parser.add_argument("--l21", type=float, default=1e-3)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--loop", choices=["fit", "custom"], default=None,
                        help="default: custom for multi_worker, fit otherwise")
    parser.add_argument("--sparsity-target", type=float,
                        help="steer l21 toward this row sparsity (SparsityTarget, fit only)")
    parser.add_argument("--save-weights")
    parser.add_argument("--checkpoint")
    parser.add_argument("--restore")
    args = parser.parse_args(argv)

    strategy = make_strategy(args.strategy, args.logical_cpus)  # before any other TF work
    loop = args.loop or ("custom" if args.strategy == "multi_worker" else "fit")
    if args.sparsity_target is not None and loop != "fit":
        parser.error("--sparsity-target is a fit callback: it needs --loop fit")

    import keras

    import criteo_deepfm
    import ctr_data
    import group_lasso_tf as gl

    keras.utils.set_random_seed(0)
    data = ctr_data.load_criteo()
    n = args.global_batch * args.steps
    features = (data.train.categorical[:n], data.train.dense[:n])
    dataset = tf.data.Dataset.from_tensor_slices((features, data.train.label[:n]))
    dataset = dataset.batch(args.global_batch, drop_remainder=True)

    with strategy.scope():
        optimizer = criteo_deepfm.OPTIMIZERS[args.optimizer](args)
        model = criteo_deepfm.for_optimizer(
            criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1]), optimizer)
        model.compile(optimizer=optimizer, loss="binary_crossentropy")
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        if args.restore:
            checkpoint.read(os.path.join(args.restore, "ckpt")).assert_consumed()
    print(f"strategy: {type(strategy).__name__}, replicas: {strategy.num_replicas_in_sync}, "
          f"fused ops: {gl.fused_available()}")
    if args.steps and loop == "fit":
        callbacks = []
        if args.sparsity_target is not None:
            # Updates every 2 steps, so that a short run steers several times.
            callbacks.append(gl.sparsity.SparsityTarget(args.sparsity_target, update_every=2))
        model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    elif args.steps:
        custom_loop(strategy, model, optimizer, features, data.train.label[:n], args)

    is_chief = args.strategy != "multi_worker" or \
        json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    if args.checkpoint:
        # Every worker writes (collective ops need all of them); only the chief's is kept.
        target = args.checkpoint if is_chief else os.path.join(
            args.checkpoint, "worker_tmp", str(json.loads(os.environ["TF_CONFIG"])["task"]["index"]))
        checkpoint.write(os.path.join(target, "ckpt"))
    sparsity = criteo_deepfm.embedding_row_sparsity(model)
    zero, rows = sum(z for z, _ in sparsity.values()), sum(r for _, r in sparsity.values())
    print(f"embedding row sparsity: {zero}/{rows}")
    if args.save_weights and is_chief:
        arrays = {f"w{i}": w.numpy() for i, w in enumerate(model.weights)}
        arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
        # Every replica's copy of the weights and of the optimizer's variables
        # (slots, and the strengths a SparsityTarget assigns between steps).
        replicas = [getattr(w.value, "values", None)
                    for w in model.weights + list(optimizer.variables)]
        arrays["replicas_identical"] = np.array(all(
            r is None or all(np.array_equal(r[0].numpy(), x.numpy()) for x in r) for r in replicas))
        np.savez(args.save_weights, **arrays)


if __name__ == "__main__":
    main()
