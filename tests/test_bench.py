"""Every benchmark's --quick variant runs and checks its own outputs are sane.

Speed is not asserted here (these machines are shared and noisy); the full
runs and their results are in docs/benchmarks.md. The quick runs are
subprocesses, mostly single-threaded (importing TensorFlow, tracing), so the
selected ones are started two at a time when the first test needs them (CI
has 2 cores) and each test checks its own.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

import group_lasso_tf as gl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.bench

# Longest first (seconds of their --quick runs, two at a time on 2 cores, on
# 2026-12-03: 74, 60, 41, 40, 37, 37, 30, 20, then 8-11 each), so that the
# two workers finish together.
SCRIPTS = ["sparsity_target.py", "deepfm_e2e.py", "dynamic_stream.py", "strength_overhead.py",
           "adahessian_cost.py", "quality.py", "l21_sweep.py", "step_overhead.py",
           "dynamic_embedding.py", "steering_cost.py", "sparse_update.py", "embedding_fit.py",
           "row_step.py", "dense_update.py", "skewed_tables.py"]
WRITES = ("quality.py", "sparsity_target.py", "l21_sweep.py")  # take --out DIR


def _run(script, out_dir):
    args = ["--quick"] + (["--out", out_dir] if script in WRITES else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.path.dirname(os.path.dirname(gl.__file__)))
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench", script)] + args,
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")


@pytest.fixture(scope="module")
def quick_runs(request, tmp_path_factory):
    """{script: (finished process, its --out directory)} for the selected tests."""
    selected = [s for s in SCRIPTS if any(
        item.nodeid.endswith(f"test_quick_benchmark_runs[{s}]") for item in request.session.items)]
    dirs = {s: str(tmp_path_factory.mktemp(s.replace(".py", ""))) for s in selected}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {s: pool.submit(_run, s, dirs[s]) for s in selected}
    return {s: (f.result(), dirs[s]) for s, f in futures.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_benchmark_runs(script, quick_runs):
    proc, out_dir = quick_runs[script]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "quick run: outputs sane" in proc.stdout
    if script == "quality.py":
        assert {"quality.md", "quality.png", "quality_runs.csv"} <= set(os.listdir(out_dir))
    if script == "sparsity_target.py":
        assert {"results.md", "trajectory.png", "runs.csv"} <= set(os.listdir(out_dir))
