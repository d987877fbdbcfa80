"""Loads the fused op library once and says clearly why when it cannot.

`fused_ops()` returns the loaded module of custom ops, or None when the
library is missing, fails to load, or was built against another TensorFlow
version; in those cases one warning says why and how to rebuild, and the
optimizers run on `group_lasso_tf.tf_step`, the same math in plain
TensorFlow ops. Set GROUP_LASSO_TF_DISABLE_OPS=1 to force that fallback.
"""

import glob
import os
import threading
import warnings

import tensorflow as tf

_LIB_DIR = os.path.dirname(os.path.abspath(__file__))
_REBUILD = "rebuild it with `pip install --force-reinstall --no-deps .` in the source tree"

_lock = threading.Lock()
_state = {"loaded": False, "module": None, "reason": None}


def library_path():
    """Path of the compiled op library next to this file, or None."""
    paths = sorted(glob.glob(os.path.join(_LIB_DIR, "_ops*.so")))
    return paths[0] if paths else None


def _build_info():
    """What setup.py recorded of the build (group_lasso_tf/_build_info.py), or None."""
    try:
        from group_lasso_tf import _build_info as info
    except ImportError:
        return None
    return info


def _load():
    if os.environ.get("GROUP_LASSO_TF_DISABLE_OPS") == "1":
        return None, "GROUP_LASSO_TF_DISABLE_OPS=1 is set"
    path = library_path()
    if path is None:
        return None, f"the op library was not built (no _ops*.so in {_LIB_DIR}); {_REBUILD}"
    built_for = getattr(_build_info(), "TF_VERSION", None)
    if built_for is not None and built_for != tf.__version__:
        return None, (
            f"the op library was built for TensorFlow {built_for} but TensorFlow "
            f"{tf.__version__} is installed; {_REBUILD}"
        )
    try:
        return tf.load_op_library(path), None
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"the op library {os.path.basename(path)} failed to load ({first_line}); {_REBUILD}"


def fused_ops():
    """The loaded op module, or None (after one warning) if it is unusable."""
    if not _state["loaded"]:
        with _lock:
            if not _state["loaded"]:
                module, reason = _load()
                _state.update(loaded=True, module=module, reason=reason)
                if reason is not None and os.environ.get("GROUP_LASSO_TF_DISABLE_OPS") != "1":
                    warnings.warn(
                        f"group_lasso_tf: using the pure-TensorFlow fallback: {reason}.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    return _state["module"]


def apply_op(op_name):
    """The Python function of the loaded op `op_name` (a name of
    `rules.Rule.op_names()`, e.g. "ResourceApplyGroupAMSGrad"), which
    TensorFlow generates under a snake-case name ("resource_apply_group_ams_grad").
    """
    function = _state.get("by_op_name", {}).get(op_name)
    if function is None:
        module = fused_ops()
        if module is None:
            raise RuntimeError(f"the op library is not loaded: {unavailable_reason()}")
        # Every public function of the module, keyed as its op is named
        # (TensorFlow's snake-case form, with the underscores dropped, is
        # the op name in lower case).
        by_op_name = {name.replace("_", ""): getattr(module, name) for name in dir(module)
                      if name.startswith("resource_") and not name.endswith("_eager_fallback")}
        function = by_op_name.get(op_name.lower())
        if function is None:
            raise ValueError(f"the op library has no op {op_name!r}")
        _state.setdefault("by_op_name", {})[op_name] = function
    return function


def gpu_kernels_built():
    """True when the op library was compiled with its CUDA kernels (setup.py
    does where TensorFlow and nvcc allow it)."""
    return bool(getattr(_build_info(), "CUDA", False))


def fused_available():
    """True when the fused C++ ops are loaded and will be used."""
    return fused_ops() is not None


def unavailable_reason():
    """Why the fused ops are not used, or None when they are."""
    fused_ops()
    return _state["reason"]
