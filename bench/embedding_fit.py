"""Time per `fit` step of a model with one large embedding table, optimizers side by side.

    python bench/embedding_fit.py [--rows 1000000] [--dim 32] [--batch 1024] [--steps 80] [--quick]

The model is Embedding(rows, dim) over 4 ids per example, then Dense(1). Keras's
Embedding reads the whole table every step, so this also shows that the fused
ops never copy the table (a copy of a 10^6 x 32 table costs more than a step).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

OPTIMIZERS = {
    "group_adam": lambda: gl.GroupAdam(l1=1e-6, l21=1e-4),
    "group_ftrl": lambda: gl.GroupFtrl(l1=1e-6, l21=1e-4),
    "keras_adam": lambda: keras.optimizers.Adam(),
    "keras_ftrl": lambda: keras.optimizers.Ftrl(),
}


def time_fit(make_optimizer, rows, dim, batch, steps):
    keras.utils.set_random_seed(0)
    ids = keras.Input((4,), dtype="int32")
    h = keras.layers.Flatten()(keras.layers.Embedding(rows, dim)(ids))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=make_optimizer(), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, rows, size=(batch * steps, 4)).astype("int32")
    y = rng.integers(0, 2, size=(batch * steps,)).astype("float32")
    model.fit(x[: 4 * batch], y[: 4 * batch], batch_size=batch, verbose=0)  # trace, warm up
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, verbose=0)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--optimizers", default="group_adam,group_ftrl,keras_adam,keras_ftrl")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.batch = 10_000, 5, 256
    names = args.optimizers.split(",")
    results = {n: time_fit(OPTIMIZERS[n], args.rows, args.dim, args.batch, args.steps) for n in names}
    print(f"Embedding({args.rows}, {args.dim}), batch {args.batch} x 4 ids, {args.steps} steps")
    print(f"{'optimizer':<14}{'ms/step':>10}{'ratio to ' + names[0]:>22}")
    for n in names:
        print(f"{n:<14}{results[n] * 1e3:>10.2f}{results[n] / results[names[0]]:>22.2f}")
    if args.quick:
        assert all(v > 0 for v in results.values())
        print("quick run: outputs sane")


if __name__ == "__main__":
    main()
