"""The standalone CUDA harness: build it, check it against the NumPy reference, time it.

    python tests/gpu/run_harness.py            # build, check every rule, benchmark
    python tests/gpu/run_harness.py --build-only
    python tests/gpu/run_harness.py --arch native --out DIR   # for this machine's GPU only
    python tests/gpu/run_harness.py --lib DIR/libgl_gpu_harness.so --no-benchmark

(tests/gpu/device_check.sh runs these on a lent GPU machine.)

Needs nvcc and, to run, an NVIDIA GPU; not TensorFlow. The device code is
cc/group_lasso/gpu_apply.cuh, the code the TensorFlow GPU kernels launch.
Every optimizer, dense and sparse (duplicate ids, rows first touched late,
an empty batch), float32 and float64, a 7-step sequence compared with the
float64 NumPy reference of docs/algorithm.md (tests/np_reference.py); the
sparse rules also with several tables in one launch (widths, sizes and
strengths drawn at random, one batch empty, then an out-of-range id in the
last: reported, nothing written); then the sparse step's achieved bandwidth
against the card's device-to-device copy.
"""

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for np_reference

import np_reference  # noqa: E402

# Every rule of the table (np_reference holds one entry per rule of
# group_lasso_tf/rules.py; tests/test_rule_table.py checks it).
RULES = tuple(np_reference.SLOTS)
# Architectures of TensorFlow's CUDA builds that nvcc 12/13 still targets, with PTX for newer.
GENCODE = ["-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_80,code=sm_80",
           "-gencode", "arch=compute_90,code=[sm_90,compute_90]"]


def build_command(out_dir=None, gencode=GENCODE):
    """(nvcc command that compiles harness.cu into a shared library, its path)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found on PATH")
    out_dir = out_dir or tempfile.mkdtemp(prefix="gl_gpu_")
    out = os.path.join(out_dir, "libgl_gpu_harness.so")
    cmd = [nvcc, "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-I",
           os.path.join(ROOT, "cc"), *gencode, "-o", out, os.path.join(HERE, "harness.cu")]
    return cmd, out


def build(out_dir=None, gencode=GENCODE):
    """Compiles harness.cu into a shared library; returns its path."""
    cmd, out = build_command(out_dir, gencode)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("nvcc failed:\n" + proc.stderr[-5000:])
    return out


def load(path):
    lib = ctypes.CDLL(path)
    lib.gl_gpu_device_name.restype = ctypes.c_char_p
    lib.gl_gpu_copy_gbps.restype = ctypes.c_double
    lib.gl_gpu_copy_gbps.argtypes = [ctypes.c_int64, ctypes.c_int]
    return lib


# The tests' hyperparameters, with Nesterov momentum and FTRL's shrinkage and
# beta switched on.
HP = {rule: dict(hp) for rule, hp in np_reference.BASE_HP.items()}
HP["momentum"]["nesterov"] = True
HP["ftrl"].update(l2_shrinkage=0.0625, beta=0.25)
hyper_list = np_reference.hyper_list


def gpu_step(lib, rule, var, state, grad, ids, lr, l1, l21, l2, hp, t, hess=None,
             repeats=1):
    """One step on the GPU; returns (var', state', milliseconds per step)."""
    dtype = var.dtype
    var = np.ascontiguousarray(var.copy())
    names = np_reference.SLOTS[rule]
    slots = [np.ascontiguousarray(state[k].astype(dtype)) for k in names]
    grad = np.ascontiguousarray(np.asarray(grad, dtype))
    hess = None if hess is None else np.ascontiguousarray(np.asarray(hess, dtype))
    rows = var.shape[0]
    d = int(np.prod(var.shape[1:]))
    ptr = ctypes.c_void_p
    slot_ptrs = (ptr * len(slots))(*[s.ctypes.data for s in slots])
    ids_arr = None if ids is None else np.ascontiguousarray(np.asarray(ids, np.int64))
    common = (ctypes.c_double * 4)(lr, l1, l21, l2)
    hyper = hyper_list(rule, hp, t)
    hyper_arr = (ctypes.c_double * max(1, len(hyper)))(*hyper)
    err = ctypes.create_string_buffer(512)
    ms = ctypes.c_float(0)
    rc = lib.gl_gpu_apply(
        rule.encode(), ctypes.c_int(dtype == np.float64), ctypes.c_int64(rows), ctypes.c_int64(d),
        ptr(var.ctypes.data), slot_ptrs, ptr(grad.ctypes.data),
        ptr(None if hess is None else hess.ctypes.data), ptr(None), ctypes.c_int(1),
        ptr(None if ids_arr is None else ids_arr.ctypes.data),
        ctypes.c_int64(-1 if ids is None else len(ids_arr)), common, hyper_arr,
        ctypes.c_int(bool(hp.get("nesterov") or hp.get("centered"))),  # the rule's flag
        ctypes.c_int(repeats), ctypes.byref(ms), err,
        ctypes.c_int(len(err)))
    if rc != 0:
        raise ValueError(err.value.decode())
    return var, dict(zip(names, slots)), ms.value


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def check_rule(lib, rule, sparse, dtype, rng):
    """Largest relative error over a 7-step sequence (each step from the GPU's state)."""
    rows, dim = 16, 6
    row_scale = 10.0 ** rng.uniform(-3, 0.5, size=(rows, 1))
    row_scale[0], row_scale[1] = 30.0, 1e-4
    var = (rng.normal(size=(rows, dim)) * row_scale).astype(dtype)
    hp = HP[rule]
    state = {k: v.astype(dtype) for k, v in np_reference.initial_state(rule, var.shape, hp).items()}
    lr = 0.125
    strengths = dict(l1=0.01, l21=0.02 if rule in ("adam", "amsgrad", "adahessian") else 0.2,
                     l2=0.03)
    worst = 0.0
    for t in range(1, 8):
        if sparse:
            n = 0 if t == 3 else int(rng.integers(3, 12))
            ids = rng.integers(0, min(rows, 4 + 3 * t), size=n)
            if n:
                ids[: n // 3] = ids[0]  # duplicates
            grad = rng.normal(size=(n, dim)) * row_scale[ids]
        else:
            ids, grad = None, rng.normal(size=(rows, dim)) * row_scale
        hess = rng.normal(size=grad.shape) * np.abs(grad) if rule == "adahessian" else None
        grad = grad.astype(dtype)
        hess = None if hess is None else hess.astype(dtype)
        step = np_reference.sparse_step if sparse else np_reference.dense_step
        args = (grad, ids) if sparse else (grad,)
        ref, ref_state = step(rule, var.astype(np.float64),
                              {k: v.astype(np.float64) for k, v in state.items()}, *args, lr,
                              hp=hp, t=t, hess=hess, **strengths)
        var, state, _ = gpu_step(lib, rule, var, state, grad, ids, lr, hp=hp, t=t, hess=hess,
                                 **strengths)
        worst = max(worst, rel_err(var, ref), *(rel_err(state[k], ref_state[k]) for k in state))
        # Rows the reference zeroes are exactly +0.0 on the GPU too.
        zero = np.all(ref == 0, axis=1)
        if not np.array_equal(np.all(var == 0, axis=1), zero) or np.any(np.signbit(var[zero])):
            raise AssertionError(f"{rule}: zero rows differ at step {t}")
    return worst


def check_errors(lib, rng):
    """Out-of-range ids: an error naming the position, nothing written."""
    var = rng.normal(size=(10, 4))
    state = np_reference.initial_state("adam", var.shape, HP["adam"])
    try:
        gpu_step(lib, "adam", var, state, np.ones((3, 4)), [1, 10, 2], 0.1, 0, 0, 0, HP["adam"], 1)
    except ValueError as e:
        assert "indices[1] = 10" in str(e), e
        return
    raise AssertionError("an out-of-range id was accepted")


def gpu_tables_step(lib, rule, tables, lr, hp, t):
    """One sparse step of several tables in one launch (the multi-table op's
    path). tables: dicts with var, state, grad, ids, l1, l21, l2; returns
    ([(var', state')], (bad position, bad id) or None)."""
    ptr = ctypes.c_void_p
    names = np_reference.SLOTS[rule]
    dtype = tables[0]["var"].dtype
    keep, vars_, slots, grads, ids = [], [], [], [], []
    for table in tables:
        var = np.ascontiguousarray(table["var"].copy())
        state = [np.ascontiguousarray(table["state"][k].astype(dtype)) for k in names]
        grad = np.ascontiguousarray(np.asarray(table["grad"], dtype))
        idx = np.ascontiguousarray(np.asarray(table["ids"], np.int64))
        keep.append((var, state, grad, idx))
        vars_.append(var.ctypes.data)
        slots.extend(s.ctypes.data for s in state)
        grads.append(grad.ctypes.data)
        ids.append(idx.ctypes.data)
    n = len(tables)
    i64 = ctypes.c_int64
    rows = (i64 * n)(*[v.shape[0] for v, *_ in keep])
    dims = (i64 * n)(*[int(np.prod(v.shape[1:])) for v, *_ in keep])
    counts = (i64 * n)(*[len(i) for *_, i in keep])
    common = (ctypes.c_double * (4 * n))(*[x for tb in tables
                                            for x in (lr, tb["l1"], tb["l21"], tb["l2"])])
    hyper = hyper_list(rule, hp, t)
    hyper_arr = (ctypes.c_double * max(1, len(hyper)))(*hyper)
    bad = (ctypes.c_longlong * 2)()
    err = ctypes.create_string_buffer(512)
    rc = lib.gl_gpu_apply_tables(
        rule.encode(), ctypes.c_int(dtype == np.float64), ctypes.c_int(n), rows, dims,
        (ptr * n)(*vars_), (ptr * len(slots))(*slots), (ptr * n)(*grads), (ptr * n)(*ids),
        counts, common, hyper_arr, ctypes.c_int(bool(hp.get("nesterov") or hp.get("centered"))),
        bad, err, ctypes.c_int(len(err)))
    if rc != 0:
        raise ValueError(err.value.decode())
    out = [(var, dict(zip(names, state))) for var, state, *_ in keep]
    return out, (None if bad[0] < 0 else (int(bad[0]), int(bad[1])))


def _random_tables(rule, dtype, rng):
    """2-5 tables of random widths and sizes, one batch empty, duplicates."""
    tables = []
    for k in range(int(rng.integers(2, 6))):
        rows, dim = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        var = rng.normal(size=(rows, dim)).astype(dtype)
        n = 0 if k == 1 else int(rng.integers(1, 3 * rows + 2))
        ids = rng.integers(0, rows, size=n)
        tables.append(dict(var=var, grad=rng.normal(size=(n, dim)), ids=ids,
                           state={key: v.astype(dtype) for key, v in np_reference.initial_state(
                               rule, var.shape, HP[rule]).items()},
                           l1=float(rng.uniform(0, 0.02)), l21=float(rng.uniform(0, 0.3)),
                           l2=float(rng.uniform(0, 0.05))))
    return tables


def check_tables(lib, rule, dtype, rng):
    """Largest relative error of 3 multi-table steps against the reference,
    table by table; then an out-of-range id in the last table: its packed
    position and id reported, no table written."""
    tables = _random_tables(rule, dtype, rng)
    lr, hp, worst = 0.125, HP[rule], 0.0
    for t in range(1, 4):
        out, bad = gpu_tables_step(lib, rule, tables, lr, hp, t)
        assert bad is None, bad
        for table, (var, state) in zip(tables, out):
            ref, ref_state = np_reference.sparse_step(
                rule, table["var"].astype(np.float64),
                {k: v.astype(np.float64) for k, v in table["state"].items()},
                np.asarray(table["grad"], dtype), table["ids"], lr, table["l1"], table["l21"],
                table["l2"], hp=hp, t=t)
            worst = max(worst, rel_err(var, ref), *(rel_err(state[k], ref_state[k])
                                                    for k in state))
            table.update(var=var, state=state)
    last = tables[-1]
    last["ids"] = np.append(last["ids"], last["var"].shape[0])  # one past the end
    last["grad"] = np.vstack([np.asarray(last["grad"]).reshape(-1, last["var"].shape[1]),
                              np.ones((1, last["var"].shape[1]))])
    out, bad = gpu_tables_step(lib, rule, tables, lr, hp, 4)
    position = sum(len(tb["ids"]) for tb in tables) - 1
    assert bad == (position, last["var"].shape[0]), bad
    for table, (var, state) in zip(tables, out):
        assert np.array_equal(var, table["var"]), "a table was written despite a bad id"
        assert all(np.array_equal(state[k], table["state"][k]) for k in state)
    return worst


def benchmark(lib, rows=1_000_000, dims=(8, 32, 128), batch=65536, repeats=20):
    """Sparse Group Adam step: bytes that must move over its time, against copy bandwidth."""
    rng = np.random.default_rng(0)
    copy = lib.gl_gpu_copy_gbps(1 << 30, 20)
    table = []
    for d in dims:
        var = rng.normal(size=(rows, d)).astype(np.float32)
        state = {k: np.zeros_like(var) for k in np_reference.SLOTS["adam"]}
        ids = np.minimum(rng.zipf(1.1, size=batch) - 1, rows - 1)
        grad = rng.normal(size=(batch, d)).astype(np.float32)
        _, _, ms = gpu_step(lib, "adam", var, state, grad, ids, 1e-3, 1e-6, 1e-4, 0.0,
                            HP["adam"], 1, repeats=repeats)
        distinct = len(np.unique(ids))
        moved = distinct * d * 4 * 4 * 2 + batch * (d * 4 + 8)  # var+3 slots r/w, grad, ids
        table.append((d, batch, distinct, ms, moved / (ms * 1e6), moved / (ms * 1e6) / copy))
    return copy, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--out", help="directory for the built library")
    parser.add_argument("--arch", choices=["all", "native"], default="all",
                        help="all: TensorFlow's CUDA architectures (GENCODE); native: only "
                        "this machine's GPU (nvcc -arch=native), a quicker build")
    parser.add_argument("--lib", help="a library built before (no build)")
    parser.add_argument("--no-benchmark", action="store_true",
                        help="the checks only (e.g. under compute-sanitizer)")
    args = parser.parse_args(argv)
    if args.lib:
        path = args.lib
    else:
        path = build(args.out, GENCODE if args.arch == "all" else ["-arch=native"])
        print(f"built {path}")
    if args.build_only:
        return 0
    lib = load(path)
    if lib.gl_gpu_device_count() == 0:
        print("no CUDA device: built only")
        return 0
    print(f"device: {lib.gl_gpu_device_name().decode()}")
    rng = np.random.default_rng()
    print(f"{'rule':<12}{'mode':<8}{'dtype':<9}{'max rel err':>12}")
    failed = False
    for rule in RULES:
        for sparse in (False, True):
            for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
                err = check_rule(lib, rule, sparse, dtype, rng)
                failed |= not err <= tol
                print(f"{rule:<12}{'sparse' if sparse else 'dense':<8}{np.dtype(dtype).name:<9}"
                      f"{err:>12.2e}{'' if err <= tol else '  FAIL (tolerance %g)' % tol}")
    for rule in RULES:
        if rule == "adahessian":  # no multi-table step
            continue
        for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
            err = check_tables(lib, rule, dtype, rng)
            failed |= not err <= tol
            print(f"{rule:<12}{'tables':<8}{np.dtype(dtype).name:<9}"
                  f"{err:>12.2e}{'' if err <= tol else '  FAIL (tolerance %g)' % tol}")
    check_errors(lib, rng)
    print("out-of-range ids: error, nothing written (one table and several)")
    if args.no_benchmark:
        return 1 if failed else 0
    copy, table = benchmark(lib)
    print(f"\ndevice-to-device copy: {copy:.0f} GB/s")
    print(f"{'dim':>5}{'ids':>8}{'distinct':>10}{'ms':>9}{'GB/s':>8}{'of copy':>9}")
    for d, batch, distinct, ms, gbps, frac in table:
        print(f"{d:>5}{batch:>8}{distinct:>10}{ms:>9.3f}{gbps:>8.0f}{frac:>9.1%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
