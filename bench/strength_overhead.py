"""What holding the strengths in optimizer variables costs per step.

    python bench/strength_overhead.py [--quick] [--rounds 15]

Since issue 9 each number-valued strength (l1, l21, l2) of every regularized
variable is held by the optimizer in float64 and read each step, so that it
can change without retracing (since issue 17 all of them in one optimizer
variable, read once per step). This compares, interleaved in one process, the same
compiled step with the strengths read from those variables and with them
patched back to constants:

* one sparse step of a 10^6 x 32 table (4,096 Zipf ids), GroupAdam and GroupFtrl;
* one `train_on_batch` step of the example's DeepFM on the Criteo sample
  (26 tables + 4 kernels: 30 regularized variables, 90 strengths).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import criteo_deepfm  # noqa: E402
import ctr_data  # noqa: E402

import group_lasso_tf as gl  # noqa: E402

OPTIMIZERS = {"group_adam": lambda: gl.GroupAdam(learning_rate=1e-3, l1=1e-6, l21=1e-4),
              "group_ftrl": lambda: gl.GroupFtrl(learning_rate=0.1, l1=1e-6, l21=1e-4)}


def as_constants(opt):
    """The optimizer with its strengths patched back to constants (the code before issue 9)."""
    def strengths(variable, dtype):
        if not opt._is_regularized(variable):
            return [tf.zeros([], dtype)] * 3
        return [tf.constant(v, dtype) for v in (opt.l1, opt.l21, opt.l2)]
    # Every path (one variable, a multi-table step) reads them through this.
    opt._strengths_of = lambda variables, dtype: [strengths(v, dtype) for v in variables]
    return opt


def sparse_step(make, constant, rows):
    rng = np.random.default_rng(0)
    ids = tf.constant(rng.zipf(1.2, 4096) % rows, tf.int64)
    values = tf.constant(rng.normal(size=(4096, 32)).astype(np.float32))
    opt = make()
    table = keras.Variable(np.zeros((rows, 32), np.float32))
    opt.build([table])
    if constant:
        as_constants(opt)

    @tf.function
    def step():
        opt.apply([tf.IndexedSlices(values, ids, tf.constant([rows, 32], tf.int64))], [table])
    step()
    return step


def deepfm_step(make, constant, data):
    keras.utils.set_random_seed(0)
    model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
    opt = make()
    model.compile(optimizer=opt, loss="binary_crossentropy")
    x = [data.train.categorical[:1024], data.train.dense[:1024]]
    y = data.train.label[:1024]
    model.train_on_batch(x, y)  # builds the optimizer and traces
    if constant:
        as_constants(opt)
        model.make_train_function(force=True)
        model.train_on_batch(x, y)
    return lambda: model.train_on_batch(x, y)


def compare(label, variables_fn, constants_fn, rounds, repeats):
    times = {"variables": [], "constants": []}
    for _ in range(rounds):
        for key, fn in (("variables", variables_fn), ("constants", constants_fn)):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[key].append((time.perf_counter() - start) / repeats * 1e3)
    v, c = np.median(times["variables"]), np.median(times["constants"])
    ratio = np.median(np.array(times["variables"]) / np.array(times["constants"]))
    print(f"{label:<28}{c:>12.3f}{v:>12.3f}{ratio:>10.3f}", flush=True)
    return ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    rows = 10_000 if args.quick else 1_000_000
    rounds = 2 if args.quick else args.rounds
    # --quick (CI) times one optimizer: the code path is the same for both.
    optimizers = dict(list(OPTIMIZERS.items())[:1]) if args.quick else OPTIMIZERS
    print(f"{'step (ms, median)':<28}{'constants':>12}{'variables':>12}{'ratio':>10}")
    ratios = []
    for name, make in optimizers.items():
        ratios.append(compare(f"sparse {rows}x32 {name}", sparse_step(make, False, rows),
                              sparse_step(make, True, rows), rounds, 20))
    data = ctr_data.load_criteo()
    for name, make in optimizers.items():
        ratios.append(compare(f"deepfm fit {name}", deepfm_step(make, False, data),
                              deepfm_step(make, True, data), rounds, 5))
    if args.quick:
        # Timings are not asserted (shared, noisy machines): only that they are numbers.
        assert all(np.isfinite(r) and r > 0 for r in ratios), ratios
        print("quick run: outputs sane")


if __name__ == "__main__":
    main()
