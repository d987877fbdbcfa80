"""`model.fit` with the tf_keras group optimizers, run with TF_USE_LEGACY_KERAS=1.

    TF_USE_LEGACY_KERAS=1 python tf_keras_fit.py OUT_DIR

For GroupAdam (tf_keras.optimizers.Optimizer base) and GroupFtrl (legacy
base): trains an embedding model with `tf.keras` (tf_keras here), saves and
reloads it, and repeats the training under MirroredStrategy on two logical
CPUs. Writes what it measured to OUT_DIR/results.json
(tests/test_tf_keras.py asserts on it).
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import tf_keras  # noqa: E402

import group_lasso_tf.tf_keras as gl_tfk  # noqa: E402

ROWS, DIM, FIELDS, N, SIGNAL = 400, 4, 3, 4096, 40
CASES = {
    "optimizer-GroupAdam": lambda: gl_tfk.GroupAdam(learning_rate=0.02, l21=4e-3,
                                                    unregularized=["head"]),
    "legacy-GroupFtrl": lambda: gl_tfk.legacy.GroupFtrl(learning_rate=3.0, l21=2e-3,
                                                        unregularized=["head"]),
}
# tf_keras restores a legacy optimizer's slots from HDF5 only (its own legacy
# Adam too: in .keras files they are skipped), the new base's from .keras only.
FORMAT = {"optimizer-GroupAdam": ".keras", "legacy-GroupFtrl": ".h5"}


def data():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, ROWS, size=(N, FIELDS))
    # Only ids below SIGNAL carry signal: the others' rows should go to zero.
    weight = np.where(np.arange(ROWS) < SIGNAL, rng.normal(size=ROWS) * 2, 0.0)
    logit = weight[ids].sum(axis=1)
    labels = (rng.uniform(size=N) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return ids, labels


def build(optimizer):
    tf_keras.utils.set_random_seed(3)
    inputs = tf.keras.Input((FIELDS,), dtype="int64")
    x = tf.keras.layers.Embedding(ROWS, DIM, name="table")(inputs)
    x = tf.keras.layers.Flatten()(x)
    out = tf.keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    model = tf.keras.Model(inputs, out)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model


def table(model):
    return model.get_layer("table").embeddings


def main(out_dir):
    ids, labels = data()
    results = {}
    for name, make in CASES.items():
        model = build(make())
        hist = model.fit(ids, labels, batch_size=256, epochs=6, shuffle=False, verbose=0)
        opt = model.optimizer
        w = table(model).numpy()
        zero = np.all(w == 0, axis=1)
        path = os.path.join(out_dir, name + FORMAT[name])
        model.save(path)
        loaded = tf.keras.models.load_model(path)
        # One more step on both copies, same batch.
        model.train_on_batch(ids[:256], labels[:256])
        loaded.train_on_batch(ids[:256], labels[:256])
        diff = max(float(np.max(np.abs(a - b)))
                   for a, b in zip(model.get_weights(), loaded.get_weights()))

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            mirrored = build(make())
        mirrored.fit(ids, labels, batch_size=256, epochs=6, shuffle=False, verbose=0)
        wm = table(mirrored).numpy()
        results[name] = {
            "tf_keras_is_tf_keras": tf.keras.Model is tf_keras.Model,
            "class": type(opt).__module__ + "." + type(opt).__name__,
            "loaded_class": type(loaded.optimizer).__module__ + "."
            + type(loaded.optimizer).__name__,
            "loss_first": float(hist.history["loss"][0]),
            "loss_last": float(hist.history["loss"][-1]),
            "zero_row_fraction": float(zero.mean()),
            "signal_rows_zero": float(zero[:SIGNAL].mean()),
            "noise_rows_zero": float(zero[SIGNAL:].mean()),
            "next_step_max_abs_diff": diff,
            "mirrored_rel_err": float(np.linalg.norm(wm - w) / max(np.linalg.norm(w), 1e-30)),
            "mirrored_same_zero_rows": bool(np.array_equal(np.all(wm == 0, axis=1), zero)),
        }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
