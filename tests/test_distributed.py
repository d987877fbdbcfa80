"""tf.distribute: Mirrored (2 logical CPUs), MultiWorkerMirrored (2 processes on
127.0.0.1) and ParameterServer (2 PS + 2 worker processes, a sharded table) give
the results of one-device training; checkpoints move between strategies.

Every process is a subprocess with a time limit, killed at the end of its test.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import group_lasso_tf as gl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
pytestmark = pytest.mark.distributed

COMMON = ["--steps", "12", "--global-batch", "128"]


def _env(extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # The package under test, not the source tree that `python script` would not see anyway.
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(gl.__file__))
    env.update(extra or {})
    return env


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_example(script, args, env=None, timeout=300):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)] + args, env=_env(env),
                          capture_output=True, text=True, timeout=timeout, cwd="/")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def start(script, args, env=None, log=None):
    return subprocess.Popen([sys.executable, os.path.join(EXAMPLES, script)] + args, env=_env(env),
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd="/",
                            start_new_session=True)


def stop(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def assert_same_training(a_path, b_path, tol=5e-5):
    a, b = np.load(a_path), np.load(b_path)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        if key == "replicas_identical":
            continue
        scale = max(np.max(np.abs(a[key])), 1e-30) if a[key].size else 1.0
        err = np.max(np.abs(a[key] - b[key])) / scale if a[key].size else 0.0
        assert err <= tol, (key, err)
    table = a["w0"]
    assert 0 < np.sum(np.all(table == 0, axis=1)) < table.shape[0]
    # Row sparsity is exactly the same, table by table.
    for key in a.files:
        if key.startswith("w") and a[key].ndim == 2:
            np.testing.assert_array_equal(np.all(a[key] == 0, axis=1), np.all(b[key] == 0, axis=1))


@pytest.mark.parametrize("optimizer", ["adam", "ftrl"])
def test_mirrored_fit_equals_one_device(optimizer, tmp_path):
    args = COMMON + ["--optimizer", optimizer, "--l21", "2e-4"]
    if optimizer == "ftrl":
        args += ["--lr", "0.05", "--l21", "2e-3"]
    run_example("distributed_train.py", args + ["--strategy", "one_device",
                                                "--save-weights", str(tmp_path / "one.npz")])
    run_example("distributed_train.py", args + ["--strategy", "mirrored", "--logical-cpus", "2",
                                                "--save-weights", str(tmp_path / "mirrored.npz")])
    assert np.load(tmp_path / "mirrored.npz")["replicas_identical"]
    assert_same_training(tmp_path / "one.npz", tmp_path / "mirrored.npz")


def test_multi_worker_two_processes_equals_one_device(tmp_path):
    args = COMMON + ["--optimizer", "adam", "--l21", "2e-4", "--loop", "custom"]
    run_example("distributed_train.py", args + ["--strategy", "one_device",
                                                "--save-weights", str(tmp_path / "one.npz")])
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(start("distributed_train.py",
                               args + ["--strategy", "multi_worker",
                                       "--save-weights", str(tmp_path / "mw.npz")],
                               env={"TF_CONFIG": tf_config}))
        for p in procs:
            assert p.wait(timeout=300) == 0
    finally:
        stop(procs)
    assert_same_training(tmp_path / "one.npz", tmp_path / "mw.npz")


def test_checkpoint_from_mirrored_restores_on_one_device(tmp_path):
    args = COMMON + ["--optimizer", "adam", "--l21", "2e-4"]
    run_example("distributed_train.py", args + [
        "--strategy", "mirrored", "--checkpoint", str(tmp_path / "ckpt"),
        "--save-weights", str(tmp_path / "mirrored.npz")])
    run_example("distributed_train.py", ["--steps", "0", "--strategy", "one_device",
                                         "--restore", str(tmp_path / "ckpt"),
                                         "--save-weights", str(tmp_path / "restored.npz")])
    a, b = np.load(tmp_path / "mirrored.npz"), np.load(tmp_path / "restored.npz")
    for key in a.files:  # weights, slots and the iteration count, bit for bit
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
