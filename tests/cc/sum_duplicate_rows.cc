// Runs group_lasso::SumDuplicateRowsIndexedBy (cc/group_lasso/apply.h) with
// both of its row index types on one batch, for tests/test_sum_duplicates.py.
// SumDuplicateRows picks int64_t row indices only for batches of 2^31 ids or
// more (16 GB of ids), so this is the only way a test reaches that path.
//
//   sum_duplicate_rows DTYPE N D PARTS IDS GRAD OUT
//
// DTYPE is f4 or f8; IDS holds N int64 ids, GRAD N * D values of DTYPE.
// OUT gets, for the int32_t then the int64_t row index, for each part p of
// PARTS: the number of distinct ids, those ids (int64) in the order the part
// found them, then their summed rows (DTYPE).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "group_lasso/apply.h"

namespace {

template <typename T>
bool ReadAll(const char* path, std::vector<T>* out) {
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return false;
  // An empty vector's data() may be null, which fread must not get.
  const size_t got = out->empty() ? 0 : std::fread(out->data(), sizeof(T), out->size(), f);
  std::fclose(f);
  return got == out->size();
}

template <typename T, typename Row>
void WriteParts(const std::vector<int64_t>& ids, const std::vector<T>& grad, int64_t d,
                int64_t parts, FILE* out) {
  const int64_t n = static_cast<int64_t>(ids.size());
  for (int64_t p = 0; p < parts; ++p) {
    group_lasso::SummedRows<T, int64_t> rows;
    group_lasso::SumDuplicateRowsIndexedBy<Row>(ids.data(), n, grad.data(),
                                                static_cast<const T*>(nullptr), d, &rows, p,
                                                parts);
    const int64_t count = rows.size();
    std::fwrite(&count, sizeof(count), 1, out);
    if (count == 0) continue;  // nothing more, and data() may be null
    std::fwrite(rows.ids.data(), sizeof(int64_t), count, out);
    std::fwrite(rows.values.data(), sizeof(T), count * d, out);
  }
}

template <typename T>
int Run(int64_t n, int64_t d, int64_t parts, const char* ids_path, const char* grad_path,
        const char* out_path) {
  std::vector<int64_t> ids(n);
  std::vector<T> grad(n * d);
  if (!ReadAll(ids_path, &ids) || !ReadAll(grad_path, &grad)) {
    std::fprintf(stderr, "cannot read the inputs\n");
    return 1;
  }
  FILE* out = std::fopen(out_path, "wb");
  if (out == nullptr) return 1;
  WriteParts<T, int32_t>(ids, grad, d, parts, out);
  WriteParts<T, int64_t>(ids, grad, d, parts, out);
  return std::fclose(out) == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s f4|f8 N D PARTS IDS GRAD OUT\n", argv[0]);
    return 2;
  }
  const int64_t n = std::atoll(argv[2]), d = std::atoll(argv[3]), parts = std::atoll(argv[4]);
  if (std::strcmp(argv[1], "f4") == 0) return Run<float>(n, d, parts, argv[5], argv[6], argv[7]);
  return Run<double>(n, d, parts, argv[5], argv[6], argv[7]);
}
