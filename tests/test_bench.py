"""Every benchmark's --quick variant runs and checks its own outputs are sane.

Speed is not asserted here (these machines are shared and noisy); the full
runs and their results are in docs/benchmarks.md.
"""

import os
import subprocess
import sys

import pytest

import group_lasso_tf as gl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.bench


@pytest.mark.parametrize("script", ["sparse_update.py", "dense_update.py", "embedding_fit.py",
                                    "deepfm_e2e.py", "quality.py", "adahessian_cost.py",
                                    "sparsity_target.py", "strength_overhead.py",
                                    "steering_cost.py", "l21_sweep.py",
                                    "dynamic_embedding.py"])
def test_quick_benchmark_runs(script, tmp_path):
    writes = script in ("quality.py", "sparsity_target.py", "l21_sweep.py")
    args = ["--quick"] + (["--out", str(tmp_path)] if writes else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.path.dirname(os.path.dirname(gl.__file__)))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script)] + args,
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "quick run: outputs sane" in proc.stdout
    if script == "quality.py":
        assert {"quality.md", "quality.png", "quality_runs.csv"} <= set(os.listdir(tmp_path))
    if script == "sparsity_target.py":
        assert {"results.md", "trajectory.png", "runs.csv"} <= set(os.listdir(tmp_path))
