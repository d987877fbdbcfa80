"""Builds group_lasso_tf: the TensorFlow op library and the pybind11 module.

`pip install .` compiles
  group_lasso_tf/_ops*.so   the custom training ops (cc/ops, cc/kernels), and
  group_lasso_tf/_core*.so  the pybind11 module over cc/group_lasso,
against the TensorFlow installed in the interpreter that runs pip. pip's
build isolation hides that TensorFlow from this script (and would install a
different one if TensorFlow were a build requirement), so the flags are asked
of the target interpreter in a subprocess with the isolation undone.

When the installed TensorFlow is built with CUDA (the full `tensorflow`
wheel) and nvcc is on PATH (or CUDA_HOME is set), the GPU kernels
(cc/kernels/*.cu.cc) are compiled with nvcc for sm_75/80/90 plus PTX
(cuda_build.py) and linked into the same op library; otherwise the library
is CPU-only.

Install TensorFlow first (`pip install -r requirements.txt`). Environment:
  GROUP_LASSO_TF_SKIP_OPS=1  build without the op library (the package then
                             runs on its pure-TensorFlow fallback path).
  GROUP_LASSO_TF_CUDA=0      build the CPU-only library even where CUDA is available.
  GROUP_LASSO_TF_SANITIZE=1  build with AddressSanitizer and UBSan (run with
                             LD_PRELOAD=$(g++ -print-file-name=libasan.so); see
                             docs/building.md).
"""

import concurrent.futures
import glob
import json
import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools import Extension
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cuda_build  # noqa: E402

# Compiler flags that TensorFlow's headers need to be quiet (docs/building.md).
TF_QUIET = ["-Wno-deprecated-declarations", "--param", "destructive-interference-size=128"]
# -g0 last: it overrides the -g of the interpreter's own CFLAGS (the op
# library is 8 MB with debug info, well under 1 MB without).
# -fopenmp-simd: honour the `omp simd` pragmas of cc/group_lasso (no OpenMP
# runtime); -fno-math-errno: sqrt becomes one instruction, which lets the row
# loop vectorize (4x on a 1024 x 1024 Adam step); -fno-trapping-math: a
# comparison select (AMSGrad's running maximum) may then become a vector max
# (nothing here reads the floating-point exception flags; results are the
# same). -mavx: TensorFlow's own wheels require AVX, so it costs no machine.
CXX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wno-sign-compare", "-g0",
             "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-mavx"]
# GROUP_LASSO_TF_SANITIZE=1: AddressSanitizer everywhere, UBSan too for the
# framework-free code (TensorFlow's headers do not compile under UBSan: absl
# constexprs stop being constant).
SANITIZE = os.environ.get("GROUP_LASSO_TF_SANITIZE") == "1"
if SANITIZE:
    CXX_FLAGS = [f for f in CXX_FLAGS if f != "-g0"] + ["-fno-omit-frame-pointer", "-g"]


def _sanitize_flags(undefined):
    if not SANITIZE:
        return []
    if undefined:
        return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    return ["-fsanitize=address"]

_PROBE = r"""
import json, tensorflow as tf
print(json.dumps({"version": tf.__version__,
                  "cuda": tf.test.is_built_with_cuda(),
                  "cflags": tf.sysconfig.get_compile_flags(),
                  "lflags": tf.sysconfig.get_link_flags()}))
"""


def _runtime_tensorflow():
    """Compile/link flags of the TensorFlow the installed package will use."""
    env = dict(os.environ)
    # Undo pip's build isolation for the probe: it works through these.
    for key in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONNOUSERBASE"):
        env.pop(key, None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd="/", capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            "group_lasso_tf: cannot import TensorFlow in %s to build the op library.\n"
            "Install it first: pip install -r requirements.txt\n"
            "(or set GROUP_LASSO_TF_SKIP_OPS=1 to install without the op library).\n%s"
            % (sys.executable, proc.stderr[-2000:])
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parallel_compile(compiler, workers):
    """Makes `compiler` compile the sources of one extension `workers` at a
    time (distutils compiles them one after another; the op library's four
    translation units take most of `pip install .`)."""
    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            if obj in build:  # else up to date
                src, ext = build[obj]
                compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, objects))  # list(): raises the first compile error
        return objects

    compiler.compile = compile


class BuildExt(build_ext):
    """Fills in TensorFlow's flags at build time and records what was used."""

    def build_extensions(self):
        # Every core: the extensions side by side, and each one's sources.
        workers = os.cpu_count() or 1
        self.parallel = self.parallel or workers
        _parallel_compile(self.compiler, workers)
        for ext in self.extensions:
            if ext.name == "group_lasso_tf._ops":
                tf_info = _runtime_tensorflow()
                ext.extra_compile_args += tf_info["cflags"] + TF_QUIET
                ext.extra_link_args += tf_info["lflags"]
                tf_info["cuda_built"] = self._add_cuda(ext, tf_info)
                self._tf_info = tf_info
        super().build_extensions()

    def _add_cuda(self, ext, tf_info):
        """Compiles the .cu.cc kernels into ext when TensorFlow and nvcc allow it."""
        nvcc = cuda_build.find_nvcc()
        if not tf_info["cuda"] or nvcc is None or os.environ.get("GROUP_LASSO_TF_CUDA") == "0":
            return False
        home = cuda_build.cuda_home(nvcc)
        os.makedirs(self.build_temp, exist_ok=True)
        shim = cuda_build.cuda_include_shim(self.build_temp, home)
        for source in sorted(glob.glob(os.path.join(HERE, "cc", "kernels", "*.cu.cc"))):
            obj = os.path.join(self.build_temp, os.path.basename(source) + ".o")
            cmd = cuda_build.nvcc_compile_command(
                nvcc, source, obj, tf_info["cflags"], [os.path.join(HERE, "cc"), shim])
            print(" ".join(cmd))
            subprocess.run(cmd, check=True)
            ext.extra_objects.append(obj)
        ext.extra_compile_args += ["-DGOOGLE_CUDA=1", "-I" + shim,
                                   "-I" + os.path.join(home, "include")]
        lib_dirs = [d for d in ("lib64", "lib") if os.path.isdir(os.path.join(home, d))]
        ext.extra_link_args += ["-L" + os.path.join(home, d) for d in lib_dirs] + ["-lcudart"]
        return True

    def run(self):
        self._tf_info = None
        super().run()
        if self._tf_info is None:
            return
        # Next to the built extensions, and in the source tree for in-place
        # and editable builds (where the package is imported from there).
        targets = [os.path.join(self.build_lib, "group_lasso_tf")]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(os.path.join(HERE, "group_lasso_tf"))
        for target_dir in targets:
            os.makedirs(target_dir, exist_ok=True)
            with open(os.path.join(target_dir, "_build_info.py"), "w") as f:
                f.write('"""Written by setup.py: what the op library was built against."""\n')
                f.write("TF_VERSION = %r\n" % self._tf_info["version"])
                f.write("CUDA = %r\n" % bool(self._tf_info.get("cuda_built")))


def _extensions():
    import pybind11  # a build requirement (pyproject.toml)

    # Headers, so that editing one rebuilds the libraries that include it.
    headers = sorted(glob.glob("cc/**/*.h", recursive=True)
                     + glob.glob("cc/**/*.cuh", recursive=True))

    exts = [
        Extension(
            "group_lasso_tf._core",
            sources=["cc/python/core_module.cc"],
            depends=headers,
            include_dirs=["cc", pybind11.get_include()],
            extra_compile_args=CXX_FLAGS + _sanitize_flags(undefined=True),
            extra_link_args=_sanitize_flags(undefined=True),
            language="c++",
        )
    ]
    if os.environ.get("GROUP_LASSO_TF_SKIP_OPS") != "1":
        exts.append(
            Extension(
                "group_lasso_tf._ops",
                sources=["cc/ops/group_lasso_ops.cc", "cc/kernels/group_lasso_kernels.cc",
                         "cc/ops/dynamic_embedding_ops.cc",
                         "cc/kernels/dynamic_embedding_kernels.cc"],
                depends=headers,
                include_dirs=["cc"],
                extra_compile_args=CXX_FLAGS + _sanitize_flags(undefined=False),
                extra_link_args=_sanitize_flags(undefined=False),
                language="c++",
            )
        )
    return exts


setup(
    name="group_lasso_tf",
    version="0.1.0",
    description="Sparse group lasso adaptive optimizers (Yue et al., ECML-PKDD 2021) "
    "for TensorFlow/Keras, with fused C++ ops",
    packages=find_packages(include=["group_lasso_tf", "group_lasso_tf.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.9",
    # TensorFlow is deliberately not a requirement: the op library is compiled
    # against whichever TensorFlow wheel (tensorflow, tensorflow-cpu) is
    # installed, and requiring one would replace the other. See requirements.txt.
    install_requires=["numpy"],
    zip_safe=False,
)
