"""What one SparsityTarget update costs, against one training step, side by side.

    python bench/steering_cost.py [--quick] [--rows 1000000] [--dim 16] [--ids 65536]

One table of `--rows` x `--dim` trained by GroupAdam: the compiled sparse step
on `--ids` Zipf ids, and one update of `sparsity.SparsityTarget` (survival
strengths of every row, the quantile on the host, the proximal step re-applied
to every trained row), alternated over rounds in one process; medians and
their ratio. With the default 100 updates per `fit`, the update adds
`ratio * 100 / steps` to the time of a fit of `steps` steps.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import group_lasso_tf as gl  # noqa: E402
from group_lasso_tf import sparsity  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--ids", type=int, default=65536)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.ids, args.rounds = 20_000, 4096, 3
    rng = np.random.default_rng(0)
    inputs = keras.Input((1,), dtype="int64")
    model = keras.Model(inputs, keras.layers.Embedding(args.rows, args.dim, name="table")(inputs))
    model.compile(optimizer=gl.GroupAdam(learning_rate=1e-3, l21=1e-4), loss="mse")
    table, optimizer = model.trainable_variables[0], model.optimizer
    optimizer.build([table])
    ids = [tf.constant(np.minimum(rng.zipf(1.2, args.ids), args.rows) - 1, tf.int64)
           for _ in range(8)]
    grads = tf.constant(rng.normal(size=(args.ids, args.dim)).astype("float32"))

    @tf.function
    def step(i):
        optimizer.apply([tf.IndexedSlices(grads, i, tf.constant([args.rows, args.dim],
                                                                  tf.int64))], [table])

    for i in ids:  # every row the ids reach is trained before timing
        step(i)
    control = sparsity.SparsityTarget(0.8, update_every=1)
    control.set_model(model)
    control.params = {"steps": 10, "epochs": 1}  # the reference is at 0.8 from step 15
    control.on_train_begin()
    control._update(500)  # traced once
    steps, updates = [], []
    for r in range(args.rounds):
        start = time.perf_counter()
        step(ids[r % len(ids)])
        float(optimizer.iterations.numpy())  # waits for the step
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        control._update(500 + r)
        updates.append(time.perf_counter() - start)
    s, u = float(np.median(steps)), float(np.median(updates))
    print("| rows | dim | ids per step | sparse step (ms) | update (ms) | update / step |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.rows:,} | {args.dim} | {args.ids:,} | {1e3 * s:.2f} | {1e3 * u:.1f} "
          f"| {u / s:.1f} |")
    if args.quick:
        assert np.isfinite(u / s) and abs(control.history["sparsity"][-1] - 0.8) < 0.01
        print("quick run: outputs sane")


if __name__ == "__main__":
    main()
