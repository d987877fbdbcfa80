// The descriptors of a GPU sparse step over several tables, in one block of
// memory that the host fills and copies to the device in one transfer
// (gpu_apply.cuh launches the step; cc/kernels/group_lasso_kernels.cc fills
// the block). Host code: compiles without nvcc.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_BLOCK_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_BLOCK_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "group_lasso/apply.h"

namespace group_lasso {
namespace gpu {

// One table of a sparse step: its configuration, rows and batch (device
// pointers). `store` is AdaHessian's stored estimate (null rows: none).
template <typename Rule, typename T, typename Tindex>
struct DeviceTable {
  static_assert(std::is_trivially_copyable<StepConfig<Rule, T>>::value,
                "a table is copied to the device as bytes");
  StepConfig<Rule, T> config;
  int64_t d = 0;
  int64_t num_rows = 0;
  T* var = nullptr;
  T* slots[Rule::kNumSlots] = {};
  const T* grad = nullptr;
  const T* hess = nullptr;
  HessianStore<T> store;
  const Tindex* ids = nullptr;
  int64_t n = 0;  // ids and gradient rows in the batch
};

// What a sparse launch leaves on the device for the caller: the smallest
// position (in the packed batch of all tables) whose id is outside its
// table's [0, num_rows), and that id; kNoBadPosition when every id is valid.
constexpr unsigned long long kNoBadPosition = ~0ULL;
struct SparseCheck {
  unsigned long long bad_position;
  long long bad_id;
};

// The descriptors of a sparse launch in one block of memory, filled on the
// host and copied to the device in one transfer: the check, then the first
// packed position of each table (num_tables + 1 of them), then the tables.
template <typename Rule, typename T, typename Tindex>
struct TablesBlock {
  using Table = DeviceTable<Rule, T, Tindex>;
  GL_HOST_DEVICE static size_t FirstsOffset() { return 64; }
  GL_HOST_DEVICE static size_t TablesOffset(int num_tables) {
    const size_t end = FirstsOffset() + sizeof(int64_t) * (num_tables + 1);
    return (end + alignof(Table) - 1) / alignof(Table) * alignof(Table);
  }
  static size_t Bytes(int num_tables) {
    return TablesOffset(num_tables) + sizeof(Table) * num_tables;
  }

  GL_HOST_DEVICE static SparseCheck* Check(void* block) {
    return static_cast<SparseCheck*>(block);
  }
  GL_HOST_DEVICE static int64_t* Firsts(void* block) {
    return reinterpret_cast<int64_t*>(static_cast<char*>(block) + FirstsOffset());
  }
  GL_HOST_DEVICE static Table* Tables(void* block, int num_tables) {
    return reinterpret_cast<Table*>(static_cast<char*>(block) + TablesOffset(num_tables));
  }

  // Writes the block for tables[0..num_tables) into host memory `block`
  // (Bytes(num_tables) of it); returns the number of ids of all tables.
  static int64_t Fill(void* block, const Table* tables, int num_tables) {
    *Check(block) = SparseCheck{kNoBadPosition, 0};
    int64_t* firsts = Firsts(block);
    firsts[0] = 0;
    for (int t = 0; t < num_tables; ++t) firsts[t + 1] = firsts[t] + tables[t].n;
    // Plain bytes: the device reads them as Tables (trivially copyable).
    std::memcpy(static_cast<void*>(Tables(block, num_tables)), tables,
                sizeof(Table) * num_tables);
    return firsts[num_tables];
  }
};

}  // namespace gpu
}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_BLOCK_H_
