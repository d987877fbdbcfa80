"""Concurrent updates of one table, mixed precision, and a training process
killed with SIGKILL that resumes from its checkpoint."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from group_lasso_tf.ops import fused_ops


@pytest.mark.parametrize("use_locking", [True, False])
def test_concurrent_sparse_updates_of_one_table(use_locking, rng):
    """8 threads x 40 sparse steps on one table, ids overlapping. Plain SGD
    steps on integers commute exactly, so with locking the result equals
    every serial order: the initial table minus the sum of all gradients.
    Without locking updates may be lost, but nothing crashes and every value
    stays one that some interleaving could give (finite, integral)."""
    rows, dim, threads, steps = 64, 8, 8, 40
    start = rng.integers(-5, 5, size=(rows, dim)).astype(np.float64)
    table = tf.Variable(start)
    momentum = tf.Variable(np.zeros_like(start))
    linear = tf.Variable(np.zeros_like(start))
    op = fused_ops().resource_sparse_apply_group_momentum
    batches = [[(rng.integers(0, 16, size=32),
                 rng.integers(-3, 4, size=(32, dim)).astype(np.float64))
                for _ in range(steps)] for _ in range(threads)]
    zero = tf.constant(0.0, tf.float64)
    one = tf.constant(1.0, tf.float64)
    errors = []

    def worker(batch_list):
        try:
            for ids, grad in batch_list:
                op(table.handle, momentum.handle, linear.handle, one, zero, zero, zero, zero,
                   tf.constant(grad), tf.constant(ids), use_locking=use_locking)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, errors
    result = table.numpy()
    assert np.all(np.isfinite(result)) and np.array_equal(result, np.round(result))
    expected = start.copy()
    for batch_list in batches:
        for ids, grad in batch_list:
            np.subtract.at(expected, ids, grad)
    if use_locking:
        np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(result[16:], start[16:])  # untouched rows


def _tiny_model(seed):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((3,), dtype="int32")
    h = keras.layers.Flatten()(keras.layers.Embedding(50, 4)(ids))
    h = keras.layers.Dense(8, activation="relu")(h)
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(h))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_variables(policy, rng):
    x = rng.integers(0, 50, size=(256, 3)).astype("int32")
    y = (x[:, 0] % 3 == 0).astype("float32")
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _tiny_model(0)
        model.compile(optimizer=gl.GroupAdam(learning_rate=0.05, l21=1e-3),
                      loss="binary_crossentropy")
        losses = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history["loss"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("cls", [gl.GroupAdam, gl.GroupFtrl, gl.GroupAdagrad])
def test_loss_scale_optimizer_skips_non_finite_steps_without_writing(cls, rng):
    kernel = keras.Variable(rng.normal(size=(4, 3)).astype("float32"))
    opt = keras.optimizers.LossScaleOptimizer(cls(learning_rate=0.1, l21=1e-3))
    opt.apply([tf.ones((4, 3))], [kernel])
    before = [v.numpy().copy() for v in [kernel] + list(opt.inner_optimizer.variables)]
    bad = np.ones((4, 3), np.float32)
    bad[1, 2] = np.inf
    opt.apply([tf.constant(bad)], [kernel])
    after = [v.numpy() for v in [kernel] + list(opt.inner_optimizer.variables)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_variables_are_a_clear_error(dtype):
    v = keras.Variable(np.ones((3, 2)), dtype=dtype)
    with pytest.raises(TypeError, match="float32 and float64"):
        gl.GroupAdam().build([v])


# ---------------------------------------------------------- SIGKILL + resume
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers",
                      "checkpointed_training.py")


def _worker_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(gl.__file__))
    return env


def _train(directory, optimizer, steps, kill_after=None):
    optimizer, *table = optimizer.split("+")  # "adam+dynamic": a DynamicEmbedding
    proc = subprocess.Popen([sys.executable, WORKER, str(directory), optimizer, str(steps)] + table,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_worker_env(), cwd="/")
    try:
        for line in proc.stdout:
            if kill_after is not None and line.strip() == f"step {kill_after}":
                os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
                break
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, proc.stderr.read()


@pytest.mark.parametrize("optimizer", ["adam", "ftrl", "adahessian", "adam+dynamic"])
def test_sigkill_then_resume_from_checkpoint_equals_uninterrupted_training(optimizer, rng,
                                                                         tmp_path):
    steps = 30
    kill_after = int(rng.integers(6, steps - 2))  # after at least one checkpoint
    # The uninterrupted run beside the killed one (CI has 2 cores).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        straight = pool.submit(_train, tmp_path / "straight", optimizer, steps)
        rc, _ = _train(tmp_path / "killed", optimizer, steps, kill_after=kill_after)
        assert rc == -signal.SIGKILL
        assert not (tmp_path / "killed" / "final.npz").exists()
        rc, err = _train(tmp_path / "killed", optimizer, steps)  # resumes from the last checkpoint
        assert rc == 0, err[-3000:]
        rc, err = straight.result()
        assert rc == 0, err[-3000:]
    a = np.load(tmp_path / "straight" / "final.npz")
    b = np.load(tmp_path / "killed" / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key}, killed after {kill_after}")
    assert np.all(a["w0"] == 0, axis=1).any()  # the run did zero rows
    if "stat_live" in a.files:  # index, pool, slots and counters: freed, evicted rows
        assert a["stat_released"] > 0 and a["stat_evicted"] > 0, dict(a)
