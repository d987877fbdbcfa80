"""End to end: `fit` steps per second and peak memory of a DeepFM-style model with
26 categorical fields of production-like cardinalities (about 10^7 rows in all).

    python bench/deepfm_e2e.py [--steps 30] [--batch 1024] [--quick]

Cardinalities are those of Criteo's Kaggle fields (rounded); ids are synthetic,
Zipf-distributed per field; 13 dense fields. Each optimizer runs in its own
process (peak resident memory, `ru_maxrss`, is per process) on the same data.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARDINALITIES = [1460, 583, 3_000_000, 800_000, 305, 24, 12_517, 633, 3, 93_145, 5_683,
                 2_500_000, 3_194, 27, 14_992, 1_200_000, 10, 5_652, 2_173, 4, 1_600_000, 18,
                 15, 286_181, 105, 142_572]
OPTIMIZERS = ["group_adam", "group_ftrl", "keras_adam", "keras_ftrl"]


def child(args):
    import keras
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import criteo_deepfm

    import group_lasso_tf as gl

    factories = {
        "group_adam": lambda: gl.GroupAdam(l1=1e-6, l21=1e-4),
        "group_ftrl": lambda: gl.GroupFtrl(learning_rate=0.05, l1=1e-6, l21=1e-4),
        "keras_adam": lambda: keras.optimizers.Adam(),
        "keras_ftrl": lambda: keras.optimizers.Ftrl(learning_rate=0.05),
    }
    cards = [max(2, c // args.scale) for c in CARDINALITIES]
    rng = np.random.default_rng(0)
    n = args.batch * (args.steps + 3)
    ids = np.stack([np.minimum(rng.zipf(1.2, size=n) - 1, c - 1) for c in cards], 1).astype("int32")
    dense = rng.normal(size=(n, 13)).astype("float32")
    label = (rng.random(n) < 0.25).astype("float32")
    keras.utils.set_random_seed(0)
    model = criteo_deepfm.build_deepfm(cards, 13, embedding_dim=args.dim)
    model.compile(optimizer=factories[args.optimizer](), loss="binary_crossentropy")
    warm = 3 * args.batch
    model.fit([ids[:warm], dense[:warm]], label[:warm], batch_size=args.batch, verbose=0)
    start = time.perf_counter()
    model.fit([ids[warm:], dense[warm:]], label[warm:], batch_size=args.batch, verbose=0,
              shuffle=False)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"optimizer": args.optimizer, "steps_per_s": args.steps / seconds,
                      "peak_mb": peak_kb / 1024, "rows": int(sum(cards))}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--scale", type=int, default=1, help="divide cardinalities by this")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:  # (CI) one fused and one Keras optimizer: a process each
        args.steps, args.scale, args.batch = 5, 100, 256
        args.optimizers = "group_adam,keras_adam"
    if args.optimizer:
        return child(args)
    results = []
    for name in args.optimizers.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--optimizer", name, "--steps",
               str(args.steps), "--batch", str(args.batch), "--dim", str(args.dim), "--scale",
               str(args.scale)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    base = results[0]
    print(f"DeepFM, 26 fields, {base['rows']:,} embedding rows x {args.dim}, batch {args.batch}, "
          f"{args.steps} steps")
    print(f"{'optimizer':<12}{'steps/s':>10}{'speed vs ' + base['optimizer']:>22}{'peak MB':>10}")
    for r in results:
        print(f"{r['optimizer']:<12}{r['steps_per_s']:>10.2f}"
              f"{r['steps_per_s'] / base['steps_per_s']:>22.2f}{r['peak_mb']:>10.0f}")
    if args.quick:
        assert all(r["steps_per_s"] > 0 and r["peak_mb"] > 0 for r in results)
        print("quick run: outputs sane")
    return results


if __name__ == "__main__":
    main()
