"""Shared fixtures: a fresh random seed every run (printed, and settable with
GROUP_LASSO_TF_TEST_SEED to replay a failure), and the check that the tests
exercise the compiled ops rather than silently falling back."""

import glob
import os
import sys
import time
import zlib

# `python -m pytest` puts the working directory first on sys.path, so the
# source tree (which has no compiled ops unless built in place with
# `python setup.py build_ext --inplace`) would shadow the installed package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not glob.glob(os.path.join(_ROOT, "group_lasso_tf", "_ops*.so")):
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import numpy as np  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED = int(os.environ.get("GROUP_LASSO_TF_TEST_SEED", time.time_ns() % (2**31)))
# pytest-xdist's workers are started after this file is read in the main
# process and inherit its environment: one seed for the whole run.
os.environ["GROUP_LASSO_TF_TEST_SEED"] = str(SEED)


def pytest_report_header(config):
    return f"group_lasso_tf test seed: {SEED} (replay with GROUP_LASSO_TF_TEST_SEED={SEED})"


@pytest.fixture
def rng(request):
    # One stream per test, derived from the run's seed and the test's name. A
    # stable digest of the name: Python's str hash is salted per process, so
    # the same seed would not replay the same inputs.
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(scope="session", autouse=True)
def _require_fused_ops():
    import group_lasso_tf
    from group_lasso_tf import ops

    if os.environ.get("GROUP_LASSO_TF_DISABLE_OPS") == "1":
        return
    if not group_lasso_tf.fused_available():
        pytest.exit(
            "the fused op library is not loaded (%s); the tests would only exercise the "
            "fallback. Build it (pip install .) or set GROUP_LASSO_TF_DISABLE_OPS=1."
            % ops.unavailable_reason(),
            returncode=1,
        )
