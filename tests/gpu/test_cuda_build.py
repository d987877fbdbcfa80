"""The CUDA code compiles (CI has nvcc but no GPU) and, on a GPU, matches the reference.

* The TensorFlow GPU kernels (cc/kernels/*.cu.cc) compile with nvcc against
  TensorFlow's headers, group_lasso_kernels.cc compiles with GOOGLE_CUDA=1,
  and the three link into an op library with no undefined symbol.
* The standalone harness (tests/gpu/harness.cu) compiles and links; with a
  GPU present, every rule matches the float64 NumPy reference.

A compile error fails these tests; without nvcc they are skipped.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)


def _load_cuda_build():
    # By path: putting the repository root on sys.path would make later test
    # modules import the source tree's group_lasso_tf (no built libraries)
    # instead of the installed package.
    spec = importlib.util.spec_from_file_location("cuda_build", os.path.join(ROOT, "cuda_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_build = _load_cuda_build()
import run_harness  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="nvcc not found"),
]
# One architecture is enough to catch compile errors, at a third of the time.
CHECK_GENCODE = ["-gencode", "arch=compute_80,code=sm_80"]
TF_QUIET = ["-Wno-deprecated-declarations", "--param", "destructive-interference-size=128"]


def _check(returncode, stderr):
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert returncode == 0, "\n".join(errors[:40]) or stderr[-5000:]


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    _check(proc.returncode, proc.stderr)


def _start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def _wait(proc):
    _check(proc.wait(), proc.stderr.read())


def _run_all(cmds):
    """Runs the compile commands two at a time (CI has 2 cores; each compiler
    is single-threaded), failing on the first error."""
    running = []
    for cmd in cmds:
        if len(running) == 2:
            _wait(running.pop(0))
        running.append(_start(cmd))
    for proc in running:
        _wait(proc)


# The standalone harness, compiled beside the TensorFlow kernels when the first
# test starts (its fixture waits for it), so that both use the two cores.
_HARNESS_BUILD = {}


def _harness_gencode():
    return (run_harness.GENCODE if os.environ.get("GROUP_LASSO_TF_GPU_FULL_GENCODE")
            else CHECK_GENCODE)


def _start_harness_build(out_dir):
    if "proc" not in _HARNESS_BUILD:
        cmd, path = run_harness.build_command(str(out_dir), gencode=_harness_gencode())
        _HARNESS_BUILD.update(proc=_start(cmd), path=path)


def test_tensorflow_gpu_kernels_compile_and_link(tmp_path, tmp_path_factory):
    import tensorflow as tf

    nvcc = cuda_build.find_nvcc()
    home = cuda_build.cuda_home(nvcc)
    shim = cuda_build.cuda_include_shim(str(tmp_path), home)
    cflags = tf.sysconfig.get_compile_flags()
    objects, commands = [], []
    cuda_sources = sorted(glob.glob(os.path.join(ROOT, "cc", "kernels", "*.cu.cc")))
    assert cuda_sources, "no .cu.cc kernels found"
    for source in cuda_sources:
        obj = str(tmp_path / (os.path.basename(source) + ".o"))
        commands.append(cuda_build.nvcc_compile_command(nvcc, source, obj, cflags, ["cc", shim],
                                                        gencode=CHECK_GENCODE))
        objects.append(obj)
    for source, defines in (("cc/kernels/group_lasso_kernels.cc", ["-DGOOGLE_CUDA=1"]),
                            ("cc/ops/group_lasso_ops.cc", [])):
        obj = str(tmp_path / (os.path.basename(source) + ".o"))
        # -O0: a compile check (35 s instead of 47 s for the kernels at -O1).
        commands.append(["g++", "-c", "-std=c++17", "-O0", "-fPIC", *defines, "-Icc",
                         "-I" + shim, "-I" + os.path.join(home, "include"), *TF_QUIET, *cflags,
                         source, "-o", obj])
        objects.append(obj)
    _start_harness_build(tmp_path_factory.mktemp("harness"))
    _run_all(commands)
    library = str(tmp_path / "_ops_gpu.so")
    lib_dirs = ["-L" + os.path.join(home, d) for d in ("lib64", "lib")
                if os.path.isdir(os.path.join(home, d))]
    _run(["g++", "-shared", "-o", library, *objects, *lib_dirs, "-lcudart",
          "-Wl,--no-undefined", *tf.sysconfig.get_link_flags()])
    assert os.path.getsize(library) > 0


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    _start_harness_build(tmp_path_factory.mktemp("harness"))
    _wait(_HARNESS_BUILD["proc"])
    return run_harness.load(_HARNESS_BUILD["path"])


def test_standalone_harness_builds_and_loads(harness):
    assert harness.gl_gpu_device_count() >= 0


@pytest.mark.parametrize("rule", run_harness.RULES)
def test_harness_matches_numpy_on_the_gpu(harness, rule, rng):
    if harness.gl_gpu_device_count() == 0:
        pytest.skip("no CUDA device")
    for sparse in (False, True):
        assert run_harness.check_rule(harness, rule, sparse, np.float64, rng) <= 1e-12
        assert run_harness.check_rule(harness, rule, sparse, np.float32, rng) <= 1e-5
    if rule != "adahessian":  # several tables in one launch, as the multi-table op runs them
        assert run_harness.check_tables(harness, rule, np.float64, rng) <= 1e-12
        assert run_harness.check_tables(harness, rule, np.float32, rng) <= 1e-5
    run_harness.check_errors(harness, rng)
