"""tf.distribute: Mirrored (2 logical CPUs), MultiWorkerMirrored (2 processes on
127.0.0.1) and ParameterServer (2 PS + 2 worker processes, a sharded table, a
DynamicEmbedding sharded by key) give
the results of one-device training; checkpoints move between strategies.

Every process is a subprocess with a time limit, killed at the end of its test.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

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


def run_examples(script, arg_lists, timeout=300):
    """Runs `script` once per argument list, all at once (CI has 2 cores, and
    each run is mostly one busy thread: importing TensorFlow, tracing)."""
    procs = [subprocess.Popen([sys.executable, os.path.join(EXAMPLES, script)] + args,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd="/", start_new_session=True)
             for args in arg_lists]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        stop(procs)
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:] + err[-5000:]
    return [out for out, _ in outputs]


@contextlib.contextmanager
def beside(script, args, tmp_path):
    """Runs `script` (a reference run) while the block runs; on leaving,
    waits for it and checks it succeeded."""
    log_path = tmp_path / (os.path.basename(script) + ".beside.log")
    with open(log_path, "wb") as log:
        proc = start(script, args, log=log)
        try:
            yield
            assert proc.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        finally:
            stop([proc])


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


# GroupAdaHessian's custom loop under MirroredStrategy (`--loop custom`) is
# left to a run by hand: 65 s of CI's time, for the path its `fit` covers.
@pytest.mark.parametrize("optimizer, loop", [("adam", "fit"), ("ftrl", "fit"),
                                             ("adahessian", "fit")])
def test_mirrored_fit_equals_one_device(optimizer, loop, tmp_path):
    args = COMMON + ["--optimizer", optimizer, "--l21", "2e-4", "--loop", loop]
    if optimizer == "ftrl":
        args += ["--lr", "0.05", "--l21", "2e-3"]
    if optimizer == "adahessian":
        # D is summed over replicas like the gradient; both replicas draw the
        # same probe for a row, so two replicas estimate what one device does.
        args += ["--lr", "0.01", "--l21", "3e-4"]
    run_examples("distributed_train.py", [
        args + ["--strategy", "one_device", "--save-weights", str(tmp_path / "one.npz")],
        args + ["--strategy", "mirrored", "--logical-cpus", "2",
                "--save-weights", str(tmp_path / "mirrored.npz")]])
    assert np.load(tmp_path / "mirrored.npz")["replicas_identical"]
    assert_same_training(tmp_path / "one.npz", tmp_path / "mirrored.npz")


def test_sparsity_target_under_mirrored_equals_one_device(tmp_path):
    """SparsityTarget steering `fit` under MirroredStrategy: the strengths it
    assigns between steps reach every replica's copy and equal the one-device
    run's to 1e-6 relative (they are survival strengths of weights that agree
    to that), and so does the rest of training."""
    args = COMMON + ["--optimizer", "adam", "--l21", "2e-4", "--sparsity-target", "0.5"]
    run_examples("distributed_train.py", [
        args + ["--strategy", strategy, "--save-weights", str(tmp_path / f"{strategy}.npz")]
        for strategy in ("one_device", "mirrored")])
    one, mirrored = np.load(tmp_path / "one_device.npz"), np.load(tmp_path / "mirrored.npz")
    assert mirrored["replicas_identical"]  # weights, slots and strengths on both replicas
    # The optimizer's one strength variable (float64, an entry per strength).
    strengths = [k for k in one.files if k.startswith("o") and one[k].dtype == np.float64]
    assert len(strengths) == 1 and one[strengths[0]].ndim == 1, strengths
    l21 = set(one[strengths[0]].tolist()) - {1e-5, 0.0}  # l1 is 1e-5
    # Tables steered away from 2e-4 (12 steps, an update every 2); kernels kept 2e-4.
    assert 2e-4 in l21 and len(l21) == 2, l21
    np.testing.assert_allclose(one[strengths[0]], mirrored[strengths[0]], rtol=1e-6)
    assert_same_training(tmp_path / "one_device.npz", tmp_path / "mirrored.npz")


def test_multi_worker_two_processes_equals_one_device(tmp_path):
    args = COMMON + ["--optimizer", "adam", "--l21", "2e-4", "--loop", "custom"]
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        # The one-device reference runs beside the two workers.
        one = start("distributed_train.py", args + ["--strategy", "one_device",
                                                    "--save-weights", str(tmp_path / "one.npz")],
                    log=open(tmp_path / "one.log", "wb"))
        procs.append(one)
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(start("distributed_train.py",
                               args + ["--strategy", "multi_worker",
                                       "--save-weights", str(tmp_path / "mw.npz")],
                               env={"TF_CONFIG": tf_config}))
        for p in procs:
            assert p.wait(timeout=300) == 0, (tmp_path / "one.log").read_text()[-3000:]
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


# ------------------------------------------------------- ParameterServerStrategy
class PsCluster:
    """2 PS and 2 worker tasks started with the package's launcher, plus a chief."""

    def __init__(self, tmp_path, num_ps=2, num_workers=2):
        ports = free_ports(1 + num_workers + num_ps)
        self.spec = {
            "chief": [f"127.0.0.1:{ports[0]}"],
            "worker": [f"127.0.0.1:{p}" for p in ports[1:1 + num_workers]],
            "ps": [f"127.0.0.1:{p}" for p in ports[1 + num_workers:]],
        }
        self.tmp_path = tmp_path
        self.tasks = {}
        for job in ("ps", "worker"):
            for index in range(len(self.spec[job])):
                self.start_task(job, index)

    def start_task(self, job, index):
        log = open(self.tmp_path / f"{job}{index}.log", "ab")
        self.tasks[(job, index)] = subprocess.Popen(
            [sys.executable, "-m", "group_lasso_tf.server", "--cluster", json.dumps(self.spec),
             "--job_name", job, "--task_index", str(index)],
            env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd="/", start_new_session=True)

    def kill_task(self, job, index):
        proc = self.tasks[(job, index)]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def chief_env(self):
        return {"TF_CONFIG": json.dumps({"cluster": self.spec, "task": {"type": "chief", "index": 0}})}

    def run_chief(self, args, timeout=300):
        return run_example("distributed_ps.py", ["--mode", "ps"] + args, env=self.chief_env(),
                           timeout=timeout)

    def close(self):
        stop(self.tasks.values())


@pytest.fixture
def ps_cluster(tmp_path):
    cluster = PsCluster(tmp_path)
    yield cluster
    cluster.close()


@pytest.mark.parametrize("optimizer", ["adam", "ftrl"])
def test_ps_sharded_table_equals_single_process(optimizer, ps_cluster, tmp_path):
    """Sequential steps on a 2-PS cluster with the table sharded over both PS give
    the single-process result; the zero rows of the PS model are zero in the
    unsharded model restored from its checkpoint."""
    args = ["--optimizer", optimizer, "--steps", "12"]
    if optimizer == "ftrl":
        args += ["--lr", "0.05", "--l21", "0.02"]
    with beside("distributed_ps.py", args + ["--mode", "single", "--save-weights",
                                             str(tmp_path / "single.npz")], tmp_path):
        out = ps_cluster.run_chief(args + ["--sequential", "--checkpoint",
                                           str(tmp_path / "ckpt"),
                                           "--save-weights", str(tmp_path / "ps.npz")])
    assert "in 2 shard(s)" in out and "fused ops: True" in out
    ps, single = np.load(tmp_path / "ps.npz"), np.load(tmp_path / "single.npz")
    assert int(ps["shards"]) == 2 and int(ps["iterations"]) == 12
    zero_rows = np.all(ps["table"] == 0, axis=1)
    assert 0 < zero_rows.sum() < len(zero_rows)
    # Both shards have zero rows and surviving rows.
    half = len(zero_rows) // 2
    assert 0 < zero_rows[:half].sum() < half and 0 < zero_rows[half:].sum() < half
    np.testing.assert_array_equal(zero_rows, np.all(single["table"] == 0, axis=1))
    for key in ("table", "kernel", "bias"):
        np.testing.assert_allclose(ps[key], single[key], rtol=1e-6, atol=1e-7, err_msg=key)
    # Restore the PS checkpoint into an unsharded model (no strategy).
    run_example("distributed_ps.py", ["--mode", "single", "--steps", "0", "--restore-weights",
                                      str(tmp_path / "ckpt"),
                                      "--save-weights", str(tmp_path / "restored.npz")])
    restored = np.load(tmp_path / "restored.npz")
    np.testing.assert_array_equal(restored["table"], ps["table"])
    np.testing.assert_array_equal(np.all(restored["table"] == 0, axis=1), zero_rows)


def test_ps_dynamic_table_sharded_by_key_equals_single_process(ps_cluster, tmp_path):
    """A DynamicEmbedding over raw hashed Criteo ids on a 2-PS cluster: one
    shard (pool, index, slots) per server, and sequential steps give the
    one-process result with the same two shards bit for bit (rows per id,
    counters, dense weights); the PS checkpoint restores into one process."""
    args = ["--dynamic", "--steps", "8", "--l21", "5e-5",
            "--capacity", "8192"]
    with beside("distributed_ps.py", args + ["--mode", "single", "--shards", "2",
                                             "--save-weights", str(tmp_path / "single.npz")],
                tmp_path):
        out = ps_cluster.run_chief(args + ["--sequential", "--checkpoint",
                                           str(tmp_path / "ckpt"),
                                           "--save-weights", str(tmp_path / "ps.npz")])
    assert "in 2 shard(s)" in out and "fused ops: True" in out
    servers = [line.split(": ", 1)[1].split() for line in out.splitlines()
               if line.startswith("shard ")]
    assert [len(s) for s in servers] == [1, 1], servers  # each shard's variables together
    assert sorted(s[0].split("/device")[0] for s in servers) == ["/job:ps/replica:0/task:0",
                                                                 "/job:ps/replica:0/task:1"]
    ps, single = np.load(tmp_path / "ps.npz"), np.load(tmp_path / "single.npz")
    assert int(ps["stat_released"]) > 0 and int(ps["stat_live"]) > 0
    assert int(ps["stat_admitted"]) > int(ps["stat_live"])
    for key in ps.files:
        np.testing.assert_array_equal(ps[key], single[key], err_msg=key)
    run_example("distributed_ps.py", args + [
        "--mode", "single", "--shards", "2", "--steps", "0", "--restore-weights",
        str(tmp_path / "ckpt"), "--save-weights", str(tmp_path / "restored.npz")])
    restored = np.load(tmp_path / "restored.npz")
    for key in ("keys", "table", "kernel", "bias", "stat_live", "stat_admitted"):
        np.testing.assert_array_equal(restored[key], ps[key], err_msg=key)


def test_ps_training_survives_a_killed_worker(ps_cluster, tmp_path):
    log_path = tmp_path / "chief.log"
    with open(log_path, "wb") as log:
        chief = start("distributed_ps.py", ["--mode", "ps", "--steps", "200"],
                      env=ps_cluster.chief_env(), log=log)
        try:
            deadline = 120
            while b"starting at step" not in log_path.read_bytes() and deadline > 0:
                assert chief.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.5)
                deadline -= 0.5
            time.sleep(1.0)
            assert chief.poll() is None  # training still running
            ps_cluster.kill_task("worker", 1)
            assert chief.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        finally:
            stop([chief])
    out = log_path.read_text()
    done = [line for line in out.splitlines() if line.startswith("done:")]
    assert done, out[-3000:]
    assert "200 steps finished" in done[0], done[0]  # each, retried on the other worker if needed
    assert "failed with UnavailableError" in out  # the worker really died mid-training


def test_ps_restarted_ps_task_recovers_from_checkpoint(ps_cluster, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    ps_cluster.run_chief(["--steps", "10", "--sequential", "--checkpoint", ckpt,
                          "--save-weights", str(tmp_path / "before.npz")])
    ps_cluster.kill_task("ps", 0)
    ps_cluster.start_task("ps", 0)
    out = ps_cluster.run_chief(["--steps", "0", "--checkpoint", ckpt, "--restore",
                                "--save-weights", str(tmp_path / "after.npz")])
    assert "starting at step 10" in out
    before, after = np.load(tmp_path / "before.npz"), np.load(tmp_path / "after.npz")
    for key in ("table", "kernel", "bias", "iterations"):
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    out = ps_cluster.run_chief(["--steps", "5", "--sequential", "--checkpoint", ckpt, "--restore"])
    assert "done: 15 steps" in out
