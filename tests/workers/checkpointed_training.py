"""A training process for the checkpoint fault test (tests/test_robustness.py).

    python checkpointed_training.py DIR OPTIMIZER STEPS [dynamic]

Trains a small embedding model (with `dynamic`, its table is a
DynamicEmbedding over large int64 ids, small enough to evict) for STEPS steps on data that is a function of
the step, writing a tf.train.Checkpoint every 5 steps into DIR/ckpt and
printing "step N" after each step. If DIR/ckpt has a checkpoint, it resumes
from it. At the end it writes the weights and optimizer variables to
DIR/final.npz.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

OPTIMIZERS = {
    "adam": lambda: gl.GroupAdam(learning_rate=0.05, l1=1e-4, l21=2e-3),
    "ftrl": lambda: gl.GroupFtrl(learning_rate=0.2, l1=1e-3, l21=1e-2),
    "adahessian": lambda: gl.GroupAdaHessian(learning_rate=0.05, l21=2e-3, seed=3,
                                             update_every=2),
}


def main():
    directory, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dynamic = sys.argv[4:] == ["dynamic"]
    if dynamic and name != "adam":
        sys.exit("the dynamic table is trained with adam only")
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    ids = keras.Input((3,), dtype="int64" if dynamic else "int32")
    table = (gl.layers.DynamicEmbedding(8, capacity=40, min_count=2, on_full="evict_lru")
             if dynamic else keras.layers.Embedding(200, 8))
    h = keras.layers.Flatten()(table(ids))
    h = keras.layers.Dense(16, activation="relu")(h)
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(h))
    optimizer = OPTIMIZERS[name]()
    if dynamic:  # a weaker l21, so that rows live long enough to be evicted
        optimizer = gl.GroupAdam(learning_rate=0.05, l1=1e-4, l21=3e-4)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(directory, "ckpt"), max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_consumed()

    def batch(s):
        rng = np.random.default_rng(s)
        x = rng.integers(0, 200, size=(64, 3)).astype("int32")
        y = (x[:, 0] % 3 == 0).astype("float32")[:, None]
        if dynamic:  # ids spread over the int64 range, negative ones included
            x = (x.astype(np.int64) - 100) * 46_116_860_184_273_879
        return x, y

    @tf.function
    def train_step(x, y):
        def loss_fn():
            return tf.reduce_mean(keras.losses.binary_crossentropy(y, model(x, training=True)))

        variables = model.trainable_variables
        if isinstance(optimizer, gl.GroupAdaHessian):
            _, grads, hessians = gl.hessian.gradients_and_hessians(loss_fn, variables, optimizer)
            optimizer.apply(grads, variables, hessians=hessians)
        else:
            with tf.GradientTape() as tape:
                loss = loss_fn()
            optimizer.apply(tape.gradient(loss, variables), variables)

    while int(step.numpy()) < steps:
        x, y = batch(int(step.numpy()))
        train_step(tf.constant(x), tf.constant(y))
        step.assign_add(1)
        if int(step.numpy()) % 5 == 0:
            manager.save(checkpoint_number=int(step.numpy()))
        print(f"step {int(step.numpy())}", flush=True)
    arrays = {f"w{i}": w.numpy() for i, w in enumerate(model.weights)}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    if dynamic:
        arrays.update({f"stat_{k}": v for k, v in table.table_stats().items()})
    np.savez(os.path.join(directory, "final.npz"), **arrays)


if __name__ == "__main__":
    main()
