"""A DeepFM-style CTR model on the Criteo sample, trained with GroupAdam.

    python examples/criteo_deepfm.py [--optimizer adam|amsgrad|adahessian|adagrad|momentum|ftrl]
                                     [--lr LR] [--l1 L1] [--l21 L21] [--epochs N]
                                     [--mixed-precision mixed_float16|mixed_bfloat16]
                                     [--dynamic [--capacity ROWS]]

One embedding table per categorical field (a row per feature id). The group
lasso removes whole rows, i.e. feature ids, while training; the script prints
test AUC and the row sparsity of every table. With `--optimizer adahessian`
the model is wrapped by `group_lasso_tf.hessian.wrap`, whose `fit` also
computes the Hessian-diagonal estimates GroupAdaHessian needs. With
`--mixed-precision`, layers compute in float16/bfloat16 with float32
variables (and, for float16, Keras wraps the optimizer in a
`LossScaleOptimizer`, which skips steps with non-finite gradients). With
`--dynamic`, there is no vocabulary pass: each field's raw values are hashed
to int64 ids (`group_lasso_tf.layers.fingerprint`) and looked up in a
`DynamicEmbedding` of `--capacity` rows, whose rows the group lasso frees.
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ctr_data  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

OPTIMIZERS = {
    "adam": lambda a: gl.GroupAdam(learning_rate=a.lr, l1=a.l1, l21=a.l21, l2=a.l2),
    "amsgrad": lambda a: gl.GroupAMSGrad(learning_rate=a.lr, l1=a.l1, l21=a.l21, l2=a.l2),
    "adahessian": lambda a: gl.GroupAdaHessian(learning_rate=a.lr, l1=a.l1, l21=a.l21, l2=a.l2),
    "adagrad": lambda a: gl.GroupAdagrad(learning_rate=a.lr, l1=a.l1, l21=a.l21, l2=a.l2),
    "momentum": lambda a: gl.GroupMomentum(learning_rate=a.lr, momentum=0.9, l1=a.l1, l21=a.l21,
                                           l2=a.l2),
    "ftrl": lambda a: gl.GroupFtrl(learning_rate=a.lr, l1=a.l1, l21=a.l21, l2=a.l2),
}


# Learning rates that train this model well on the Criteo sample (bench/quality.py).
DEFAULT_LR = {"adam": 2e-3, "amsgrad": 2e-3, "adahessian": 1e-2, "adagrad": 0.05,
              "momentum": 0.05, "ftrl": 0.2}


def build_deepfm(vocab_sizes, num_dense, embedding_dim=8, hidden=(64, 32), capacity=None):
    """FM second-order interactions + an MLP over the embeddings and dense features.

    With `capacity`, `vocab_sizes` is the number of fields and each field's
    table is a `DynamicEmbedding` of `capacity` rows over int64 hashed ids.
    """
    fields = vocab_sizes if capacity is not None else len(vocab_sizes)
    categorical = keras.Input((fields,), dtype="int64" if capacity else "int32",
                              name="categorical")
    dense = keras.Input((num_dense,), dtype="float32", name="dense_features")
    if capacity is not None:
        embeddings = [gl.layers.DynamicEmbedding(embedding_dim, capacity,
                                                 name=f"embedding_{i}")(categorical[:, i])
                      for i in range(fields)]
    else:
        embeddings = [
            keras.layers.Embedding(rows, embedding_dim, name=f"embedding_{i}")(categorical[:, i])
            for i, rows in enumerate(vocab_sizes)
        ]
    stacked = keras.ops.stack(embeddings, axis=1)  # [batch, fields, dim]
    square_of_sum = keras.ops.square(keras.ops.sum(stacked, axis=1))
    sum_of_squares = keras.ops.sum(keras.ops.square(stacked), axis=1)
    fm = 0.5 * keras.ops.sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)
    h = keras.layers.Concatenate()([keras.layers.Flatten()(stacked), dense])
    for units in hidden:
        h = keras.layers.Dense(units, activation="relu")(h)
    deep = keras.layers.Dense(1)(h)
    linear = keras.layers.Dense(1)(dense) if num_dense else 0.0
    logit = keras.layers.Add()([fm, deep, linear]) if num_dense else keras.layers.Add()([fm, deep])
    # float32 output under mixed precision: a float16 sigmoid saturates.
    output = keras.layers.Activation("sigmoid", dtype="float32")(logit)
    return keras.Model([categorical, dense], output)


def for_optimizer(model, optimizer):
    """The model to compile with `optimizer`: GroupAdaHessian trains a
    `hessian.HessianModel` sharing the layers of `model`."""
    if isinstance(optimizer, gl.GroupAdaHessian):
        return gl.hessian.wrap(model)
    return model


def embedding_row_sparsity(model):
    """{table name: (zero rows, counted rows)} for every Embedding layer: rows
    never trained (ids absent from the training data) are not counted, as in
    `group_lasso_tf.sparsity`."""
    return {path.split("/")[0]: (s.zero_rows, s.counted_rows)
            for path, s in gl.sparsity.embedding_sparsity(model).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--lr", type=float, default=None,
                        help="default: DEFAULT_LR of the optimizer")
    parser.add_argument("--l1", type=float, default=1e-5)
    parser.add_argument("--l21", type=float, default=1e-3)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"],
                        default=None, help="a keras.mixed_precision policy")
    parser.add_argument("--dynamic", action="store_true",
                        help="hashed raw ids in DynamicEmbedding tables (no vocabulary pass)")
    parser.add_argument("--capacity", type=int, default=4096,
                        help="rows of each DynamicEmbedding pool (with --dynamic)")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    previous_policy = keras.mixed_precision.global_policy()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    try:
        return train(args)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def hashed(data):
    """The raw categorical strings of every split as int64 fingerprints."""
    def ids(split):
        strings = split.categorical.astype(str)
        return dataclasses.replace(split, categorical=gl.layers.fingerprint(strings).numpy())
    return dataclasses.replace(data, train=ids(data.train), dev=ids(data.dev), test=ids(data.test))


def train(args):
    keras.utils.set_random_seed(args.seed)
    if getattr(args, "dynamic", False):
        data = hashed(ctr_data.load_criteo_raw())
        model = build_deepfm(len(data.field_names), data.train.dense.shape[1],
                             capacity=args.capacity)
    else:
        data = ctr_data.load_criteo()
        model = build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
    optimizer = OPTIMIZERS[args.optimizer](args)
    model = for_optimizer(model, optimizer)
    model.compile(optimizer=optimizer, loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    print(f"optimizer: {type(model.optimizer).__name__}  lr={args.lr} l1={args.l1} l21={args.l21} "
          f"l2={args.l2}  policy: {keras.mixed_precision.global_policy().name}  "
          f"fused C++ ops: {gl.fused_available()}")
    model.fit([data.train.categorical, data.train.dense], data.train.label,
              validation_data=([data.dev.categorical, data.dev.dense], data.dev.label),
              batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    _, test_auc = model.evaluate([data.test.categorical, data.test.dense], data.test.label,
                                 batch_size=1024, verbose=0)
    print(f"\ntest AUC: {test_auc:.4f}")
    if getattr(args, "dynamic", False):
        tables = gl.sparsity.dynamic_tables(model)
        live = sum(t.table_stats()["live"] for t in tables)
        kept = sum(t.table_stats()["admitted"] - t.table_stats()["evicted"] for t in tables)
        print(f"dynamic tables: {live} live rows of {kept} admitted ids "
              f"(sparsity {1 - live / max(kept, 1):.1%}), capacity {args.capacity} each")
        print(f"{'table':<14}{'live':>7}{'admitted':>10}{'released':>10}{'dropped':>9}")
        for t in tables:
            s = t.table_stats()
            print(f"{t.name:<14}{s['live']:>7}{s['admitted']:>10}{s['released']:>10}"
                  f"{s['dropped']:>9}")
        return test_auc, 1 - live / max(kept, 1)
    sparsity = embedding_row_sparsity(model)
    zero = sum(z for z, _ in sparsity.values())
    rows = sum(r for _, r in sparsity.values())
    print(f"embedding row sparsity: {zero}/{rows} trained rows are zero ({zero / rows:.1%})")
    print(f"{'table':<14}{'field':<7}{'rows':>7}{'zero':>7}{'sparsity':>10}")
    for (name, (z, r)), field in zip(sparsity.items(), data.field_names):
        print(f"{name:<14}{field:<7}{r:>7}{z:>7}{z / r:>10.1%}")
    return test_auc, zero / rows


if __name__ == "__main__":
    main()
