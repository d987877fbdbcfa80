"""The duplicate-summing pass of the sparse ops (SumDuplicateRowsIndexedBy in
cc/group_lasso/apply.h), compiled alone against its header and compared with
NumPy on fresh random batches.

The ops index distinct rows with int32_t below 2^31 ids and int64_t above;
no test can reach the latter through an op (it takes 16 GB of ids), so both
index types are run here on the same batches and must agree bit for bit with
each other and with a NumPy sum of each id's rows in batch order. Each part of
a hash-split batch must hold exactly the ids whose hash falls in it, in order
of first appearance. The program runs under AddressSanitizer and
UndefinedBehaviorSanitizer.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "cc", "sum_duplicate_rows.cc")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    exe = str(tmp_path_factory.mktemp("sum_duplicates") / "sum_duplicate_rows")
    # Under AddressSanitizer and UndefinedBehaviorSanitizer: an access outside
    # the hash table or the sums (as it grows mid-batch) fails the run.
    proc = subprocess.run([cxx, "-O1", "-std=c++17", "-fsanitize=address,undefined",
                           "-fno-sanitize-recover=all", "-I", os.path.join(ROOT, "cc"), SOURCE,
                           "-o", exe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe


def _part_of(ids, parts):
    """SplitHash(HashId(id), parts).part, in NumPy's wrapping uint64 arithmetic."""
    return ((harness.hash_id(ids) >> np.uint64(32)) * np.uint64(parts)) >> np.uint64(32)


def _read_parts(raw, offset, parts, d, dtype):
    out = []
    for _ in range(parts):
        count = int(np.frombuffer(raw, np.int64, 1, offset)[0])
        offset += 8
        ids = np.frombuffer(raw, np.int64, count, offset)
        offset += 8 * count
        values = np.frombuffer(raw, dtype, count * d, offset).reshape(count, d)
        offset += values.nbytes
        out.append((ids, values))
    return out, offset


def _batch(rng):
    """A batch of varied size, width and skew: Zipf-hot ids drawn from a pool
    of hashed 64-bit values (negative ones included), or small dense ids."""
    n = int(rng.choice([0, 1, int(rng.integers(2, 64)), int(rng.integers(64, 6000))]))
    pool_size = int(rng.integers(1, 3000))
    if rng.random() < 0.5:
        pool = rng.integers(-(2**63), 2**63 - 1, size=pool_size, dtype=np.int64)
    else:
        pool = rng.permutation(pool_size).astype(np.int64)
    ranks = np.minimum(rng.zipf(float(rng.uniform(1.1, 2.5)), size=n) - 1, pool_size - 1)
    return pool[ranks], int(rng.integers(1, 40))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_row_index_types_sum_duplicates_in_batch_order(program, tmp_path, rng, dtype):
    for case in range(6):
        ids, d = _batch(rng)
        n = ids.size
        parts = int(rng.choice([1, 2, 3, 7]))
        grad = rng.standard_normal((n, d)).astype(dtype)
        ids_path, grad_path, out_path = (str(tmp_path / f"{name}{case}")
                                         for name in ("ids", "grad", "out"))
        ids.tofile(ids_path)
        grad.tofile(grad_path)
        tag = "f4" if dtype == np.float32 else "f8"
        proc = subprocess.run([program, tag, str(n), str(d), str(parts), ids_path, grad_path,
                               out_path], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        raw = open(out_path, "rb").read()
        narrow, offset = _read_parts(raw, 0, parts, d, dtype)
        wide, offset = _read_parts(raw, offset, parts, d, dtype)
        assert offset == len(raw)

        # NumPy: each distinct id's rows summed in batch order (ufunc.at is
        # unbuffered and goes in index order), ids in order of first appearance.
        distinct, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        sums = np.zeros((distinct.size, d), dtype)
        np.add.at(sums, inverse.reshape(-1), grad)
        owner = _part_of(distinct, parts)
        where = f"case {case}: n={n}, d={d}, parts={parts}"
        for p in range(parts):
            mine = np.flatnonzero(owner == p)
            mine = mine[np.argsort(first[mine], kind="stable")]
            for name, (got_ids, got_values) in (("int32_t", narrow[p]), ("int64_t", wide[p])):
                np.testing.assert_array_equal(got_ids, distinct[mine],
                                              err_msg=f"{name} rows, part {p}, {where}")
                np.testing.assert_array_equal(got_values, sums[mine],
                                              err_msg=f"{name} rows, part {p}, {where}")
