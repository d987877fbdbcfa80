"""nvcc commands for the GPU kernels, shared by setup.py and tests/gpu/test_cuda_build.py.

TensorFlow's headers include the CUDA headers as
`third_party/gpus/cuda/include/...`; the full `tensorflow` wheel does not ship
them and the `tensorflow-cpu` wheel has no CUDA at all, so `cuda_include_shim`
makes a directory in which that path points at the toolkit's own headers
(docs/building.md#gpu: measured with nvcc 13.0 against TensorFlow 2.21's headers).
"""

import os
import shutil

# TensorFlow's CUDA wheels target sm_60..sm_90; nvcc 13 dropped sm_60/sm_70.
# Binary code for sm_75, sm_80 and sm_90, and PTX for newer cards.
GENCODE = [
    "-gencode", "arch=compute_75,code=sm_75",
    "-gencode", "arch=compute_80,code=sm_80",
    "-gencode", "arch=compute_90,code=[sm_90,compute_90]",
]


def find_nvcc():
    return shutil.which("nvcc")


def cuda_home(nvcc=None):
    """The toolkit directory (its bin/ holds the real nvcc, behind any wrapper)."""
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(key):
            return os.environ[key]
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        return None
    with open(nvcc, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):  # a wrapper script: `exec /path/to/cuda/bin/nvcc "$@"`
        for token in head.decode(errors="ignore").split():
            if token.endswith("/bin/nvcc"):
                return os.path.dirname(os.path.dirname(token))
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def cuda_include_shim(build_dir, home):
    """A directory D with D/third_party/gpus/cuda/include -> the toolkit's include."""
    shim = os.path.join(build_dir, "cuda_shim")
    link = os.path.join(shim, "third_party", "gpus", "cuda", "include")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(os.path.join(home, "include"), link)
    return shim


def nvcc_compile_command(nvcc, source, output, tf_cflags, include_dirs, gencode=GENCODE):
    """Compiles one .cu.cc against TensorFlow's headers into an object file."""
    return [
        nvcc, "-c", "-x", "cu", "-std=c++17", "-O3", "-DGOOGLE_CUDA=1",
        "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
        # TensorFlow's headers: quiet (docs/building.md) and without their warnings as errors.
        "-Xcompiler", "-Wno-deprecated-declarations", "-diag-suppress", "20012,20014,20015,1444",
        *[f for f in tf_cflags if f.startswith(("-I", "-D"))],
        *["-I" + d for d in include_dirs],
        *gencode, "-o", output, source,
    ]
