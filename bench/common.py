"""Helpers shared by the benchmark scripts."""

import contextlib
import time

import numpy as np

from group_lasso_tf.optimizers import base as _optimizer_base


def median_seconds(step, repeats, warmup=3):
    """Median wall time of `step()` over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()  # a tf.function call on the CPU returns when its ops have run
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@contextlib.contextmanager
def reference_path():
    """Within this block the group optimizers use group_lasso_tf.tf_step (as under XLA)."""
    original = _optimizer_base._ops.fused_ops
    _optimizer_base._ops.fused_ops = lambda: None
    try:
        yield
    finally:
        _optimizer_base._ops.fused_ops = original
