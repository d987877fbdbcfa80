"""The optimizer's share of a training step: forward+backward alone against
forward+backward+update, for every optimizer of the family and Keras's Adam.

    python bench/step_overhead.py [--tables 26,100] [--scales 100,1] [--rounds 7]
                                  [--steps 10] [--optimizers ...] [--quick]

The model is the DeepFM-style model of examples/criteo_deepfm.py with one
embedding table (dim 16) per categorical field and an MLP 64-32 over 13
dense features. With 26 tables the cardinalities are Criteo's (those of
bench/deepfm_e2e.py, 9,669,296 rows in all) divided by `scale` (at least one
row each); with more tables the list repeats, scaled to the same total. Each step takes 1,024 examples
of Zipf-distributed ids per field. Side by side in one process, interleaved
rounds of `--steps` steps, median of the per-round times:

* `fwd+bwd`: a tf.function that computes the loss and the gradients of every
  trainable variable and returns them (nothing applied);
* `+ <optimizer>`: the same function, then `optimizer.apply` on every
  variable (Keras's path: the optimizer's own bookkeeping included; the
  sparse steps of all tables in one multi-table op);
* `+ <optimizer> per-table ops` (group optimizers only): the same with one
  sparse op per table (the path before the multi-table op);
* `+ raw ops` (group optimizers only): the same, but the fused ops called
  directly with constant strengths and hyperparameters, one per variable:
  the cost of the ops alone, without the optimizer's Python-built graph
  around them.

`--profile OPTIMIZER` instead traces `--steps` steps of `+ OPTIMIZER` with
TensorFlow's profiler and prints the op time per step by op type (the
median event time times the events per step), split into the optimizer's
ops (its name scope) and the model's.

The ratios are those of issue 17: full step / forward+backward. GroupAdaHessian
is not in the table: its forward+backward also computes Hessian-vector
products (bench/adahessian_cost.py).
"""

import argparse
import collections
import gc
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import criteo_deepfm  # noqa: E402
from deepfm_e2e import CARDINALITIES  # noqa: E402
from sparse_update import zipf_ids  # noqa: E402

import group_lasso_tf as gl  # noqa: E402
from group_lasso_tf import ops as gl_ops  # noqa: E402
from group_lasso_tf import rules  # noqa: E402

BATCH, DIM, NUM_DENSE = 1024, 16, 13
OPTIMIZERS = {
    "GroupAdam": lambda: gl.GroupAdam(learning_rate=1e-3, l1=1e-6, l21=1e-4),
    "GroupAMSGrad": lambda: gl.GroupAMSGrad(learning_rate=1e-3, l1=1e-6, l21=1e-4),
    "GroupAdagrad": lambda: gl.GroupAdagrad(learning_rate=0.05, l1=1e-6, l21=1e-4),
    "GroupMomentum": lambda: gl.GroupMomentum(learning_rate=0.05, momentum=0.9, l1=1e-6,
                                              l21=1e-4),
    "GroupFtrl": lambda: gl.GroupFtrl(learning_rate=0.05, l1=1e-6, l21=1e-4),
    "GroupRMSprop": lambda: gl.GroupRMSprop(learning_rate=1e-3, l1=1e-6, l21=1e-4),
    "keras Adam": lambda: keras.optimizers.Adam(learning_rate=1e-3),
}


def cardinalities(tables, scale):
    """Criteo's cardinalities repeated to `tables` tables, scaled so that
    the rows in all are Criteo's total / `scale` whatever the table count."""
    repeated = (CARDINALITIES * (-(-tables // len(CARDINALITIES))))[:tables]
    factor = scale * sum(repeated) / sum(CARDINALITIES)
    return [max(int(c / factor), 1) for c in repeated]


def make_batches(rng, sizes, count):
    batches = []
    for _ in range(count):
        ids = np.stack([zipf_ids(rng, rows, BATCH) for rows in sizes], axis=1).astype(np.int32)
        dense = rng.random((BATCH, NUM_DENSE), dtype=np.float32)
        labels = (rng.random(BATCH) < 0.25).astype(np.float32)
        batches.append((tf.constant(ids), tf.constant(dense), tf.constant(labels)))
    return batches


def raw_update(optimizer):
    """A step that calls the optimizer's fused ops directly, one per
    variable, with constant scalars: the ops' own cost."""
    rule = optimizer._rule
    dense_op, sparse_op = rule.op_names(stored=False)
    dense_op, sparse_op = gl_ops.apply_op(dense_op), gl_ops.apply_op(sparse_op)
    attrs = {rule.flag: False} if rule.flag else {}

    def apply(grads, variables):
        for g, v in zip(grads, variables):
            var = v.value
            slots = [optimizer.get_slot(v, name).value.handle for name in rule.slots]
            scalars = [tf.constant(x, var.dtype) for x in (1e-3, 1e-6, 1e-4, 0.0)]
            hyper = optimizer._rule_hyper(var.dtype)
            if isinstance(g, tf.IndexedSlices):
                sparse_op(var.handle, *slots, *scalars, *hyper, g.values, g.indices,
                          use_locking=True, **attrs)
            else:
                dense_op(var.handle, *slots, *scalars, *hyper, g, use_locking=True, **attrs)
    return apply


def measure(sizes, names, rounds, steps, rng):
    keras.utils.set_random_seed(0)
    model = criteo_deepfm.build_deepfm(sizes, NUM_DENSE, embedding_dim=DIM, hidden=(64, 32))
    variables = model.trainable_variables
    batches = make_batches(rng, sizes, steps)
    loss_fn = keras.losses.BinaryCrossentropy()

    def forward_backward(ids, dense, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels[:, None], model([ids, dense], training=True))
        return loss, tape.gradient(loss, variables)

    def with_update(apply):
        @tf.function
        def step(ids, dense, labels):
            loss, grads = forward_backward(ids, dense, labels)
            apply(grads, variables)
            return loss, grads
        return step

    steps_by_name = {"fwd+bwd": tf.function(forward_backward)}
    for name in names:
        optimizer = OPTIMIZERS[name]()
        optimizer.build(variables)
        steps_by_name[f"+ {name}"] = with_update(optimizer.apply)
        if name.startswith("Group") and gl.fused_available():
            per_table = OPTIMIZERS[name]()
            per_table._multi_table_steps = False
            per_table.build(variables)
            steps_by_name[f"+ {name} per-table ops"] = with_update(per_table.apply)
            steps_by_name[f"+ {name} raw ops"] = with_update(raw_update(optimizer))
    for step in steps_by_name.values():  # trace and warm up
        step(*batches[0])
    times = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            for b in batches:
                step(*b)
            times[name].append((time.perf_counter() - start) / len(batches) * 1e3)
    base = np.array(times["fwd+bwd"])
    return {name: (float(np.median(t)), float(np.median(np.array(t) / base)))
            for name, t in times.items()}


def profile(sizes, name, rng, steps=10):
    """{(part, op type): microseconds per step} of `steps` steps of `+ name`,
    from a TensorFlow profiler trace (part: "optimizer" for the ops in the
    optimizer's name scope, else "model"): the median time of the type's op
    events times their number per step."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    keras.utils.set_random_seed(0)
    model = criteo_deepfm.build_deepfm(sizes, NUM_DENSE, embedding_dim=DIM, hidden=(64, 32))
    variables = model.trainable_variables
    optimizer = OPTIMIZERS[name]()
    optimizer.build(variables)
    batches = make_batches(rng, sizes, steps)
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function
    def step(ids, dense, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels[:, None], model([ids, dense], training=True))
        grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        return loss, grads

    for b in batches[:2]:
        step(*b)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for b in batches:
            step(*b)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    durations = collections.defaultdict(list)
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's op events
                continue
            for event in line.events:
                op = plane.event_metadata[event.metadata_id].name
                kind = op.rsplit(":", 1)[-1]
                if kind in ("Process", "ParallelFor", "ExecutorDoneCallback"):
                    continue  # spans that contain ops, not ops
                part = "optimizer" if op.startswith(optimizer.name + "/") else "model"
                durations[(part, kind)].append(event.duration_ps / 1e6)
    # The median event times the events per step: robust to the odd slow
    # step, which a mean over a few steps is not.
    return {key: float(np.median(d)) * len(d) / len(batches) for key, d in durations.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="26,100")
    parser.add_argument("--scales", default="100,1",
                        help="cardinalities divided by each (100: 96,691 rows for 26 tables)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--profile", metavar="OPTIMIZER",
                        help="profile the steps of one optimizer instead of timing them")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.tables, args.scales, args.rounds, args.steps = "26", "1000", 1, 2
        args.optimizers = "GroupAdam"
    names = args.optimizers.split(",")
    unknown = set(names) - set(OPTIMIZERS)
    if unknown:
        parser.error(f"unknown optimizers {sorted(unknown)}; known: {sorted(OPTIMIZERS)}")
    rng = np.random.default_rng(0)
    if args.profile:
        for tables in map(int, args.tables.split(",")):
            for scale in map(int, args.scales.split(",")):
                sizes = cardinalities(tables, scale)
                micros = profile(sizes, args.profile, rng, args.steps)
                print(f"\n{tables} tables, {sum(sizes):,} rows, + {args.profile}: op time per step")
                for part in ("optimizer", "model"):
                    items = sorted(((us, kind) for (p, kind), us in micros.items() if p == part),
                                   reverse=True)
                    print(f"  {part}: {sum(us for us, _ in items):.0f} us in all")
                    for us, kind in items[:8]:
                        print(f"    {us:9.0f} us  {kind}")
        return micros
    print(f"DeepFM-style model, dim {DIM}, MLP 64-32, batch {BATCH}; median of {args.rounds} "
          f"interleaved rounds of {args.steps} steps; ratio = step / fwd+bwd (per round)")
    results = []
    for tables in map(int, args.tables.split(",")):
        for scale in map(int, args.scales.split(",")):
            sizes = cardinalities(tables, scale)
            # One optimizer at a time at 10^7 rows: each holds 2-3 slots per row.
            for name in names:
                out = measure(sizes, [name], args.rounds, args.steps, rng)
                print(f"\n{tables} tables, {sum(sizes):,} rows:")
                for config, (ms, ratio) in out.items():
                    print(f"  {config:<28}{ms:>9.2f} ms{ratio:>8.2f}x")
                    results.append((tables, sum(sizes), config, ms, ratio))
                keras.backend.clear_session()  # free the model and slots before the next
                gc.collect()
    if args.quick:
        assert all(np.isfinite(ms) and ms > 0 and ratio > 0 for *_, ms, ratio in results), results
        print("quick run: outputs sane")
    return results


if __name__ == "__main__":
    main()
