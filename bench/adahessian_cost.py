"""Cost of a GroupAdaHessian `fit` step relative to GroupAdam, on the Criteo DeepFM.

    python bench/adahessian_cost.py [--batch 1024] [--steps 20] [--rounds 5] [--quick]

The example's DeepFM on the real Criteo sample (26 tables, 10,000 rows in all,
dense layers 64-32) and a copy with 100x larger tables (ids spread over the
extra rows), one `train_on_batch` per step. Every configuration is timed in
rounds, interleaved with the others, and each round's time is divided by the
GroupAdam time of the same round; the table gives the median ratio. A
GroupAdaHessian step adds a Hessian-vector product per probe (a second
backward pass through the first one, `n_samples` of them) unless it reuses
an estimate (`update_every`).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

CONFIGS = {
    "group_adam": dict(),
    "adahessian n=1": dict(n_samples=1, update_every=1),
    "adahessian n=1 every=4": dict(n_samples=1, update_every=4),
    "adahessian n=2": dict(n_samples=2, update_every=1),
}


def _models(data, scale, configs):
    import keras

    import criteo_deepfm
    import group_lasso_tf as gl

    vocab = [v * scale for v in data.vocab_sizes]
    models = {}
    for name, kwargs in configs.items():
        keras.utils.set_random_seed(0)
        if name == "group_adam":
            optimizer = gl.GroupAdam(learning_rate=2e-3, l1=1e-5, l21=1e-4)
        else:
            optimizer = gl.GroupAdaHessian(learning_rate=1e-2, l1=1e-5, l21=1e-4, seed=0, **kwargs)
        model = criteo_deepfm.for_optimizer(
            criteo_deepfm.build_deepfm(vocab, data.train.dense.shape[1]), optimizer)
        model.compile(optimizer=optimizer, loss="binary_crossentropy")
        models[name] = model
    return models


def measure(batch, steps, rounds, scale, configs):
    import ctr_data

    data = ctr_data.load_criteo()
    rng = np.random.default_rng(0)
    n = len(data.train.label)
    categorical = data.train.categorical.astype("int64")
    # Larger tables: each id moves to one of `scale` copies of its row.
    categorical = categorical * scale + rng.integers(0, scale, size=categorical.shape)
    batches = []
    for s in range(steps):
        at = rng.integers(0, n, size=batch)
        batches.append(([categorical[at].astype("int32"), data.train.dense[at]],
                        data.train.label[at]))
    models = _models(data, scale, configs)
    for model in models.values():  # trace and warm up
        for x, y in batches[:3]:
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for x, y in batches:
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    base = np.array(times["group_adam"])
    return {name: (float(np.median(t)), float(np.median(np.array(t) / base)))
            for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.rounds = 256, 4, 2
    results = {}
    # --quick (CI) times two of the configurations: each one traces its own model.
    configs = {k: CONFIGS[k] for k in ("group_adam", "adahessian n=1")} if args.quick else CONFIGS
    for scale in (1,) if args.quick else (1, 100):
        results[scale] = measure(args.batch, args.steps, args.rounds, scale, configs)
    print(f"Criteo DeepFM, batch {args.batch}, {args.steps} steps x {args.rounds} rounds")
    print(f"{'configuration':<26}{'rows':>10}{'ms/step':>10}{'vs group_adam':>15}")
    for scale, rows in results.items():
        for name, (seconds, ratio) in rows.items():
            print(f"{name:<26}{10_000 * scale:>10,}{seconds * 1e3:>10.2f}{ratio:>15.2f}")
    if args.quick:
        assert all(s > 0 and r > 0 for rows in results.values() for s, r in rows.values())
        print("quick run: outputs sane")
    return results


if __name__ == "__main__":
    main()
