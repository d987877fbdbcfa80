// CUDA drivers of the row step (prox.h), framework-free: the TensorFlow GPU
// functors (cc/kernels/group_lasso_kernels.cu.cc) and the standalone harness
// (tests/gpu/harness.cu) both launch these.
//
// One thread block per row: the block reads the row of var and of every
// slot once, sums the gradient (and Hessian) rows of a sparse id's
// duplicates on the fly, computes the element-wise part of the step
// (ElementPrePass, the same function the CPU runs), reduces ||s||^2 over the
// block and rescales the row by the group factor. A sparse step takes any
// number of tables in a fixed number of launches: their ids are packed with
// their table into keys and range-checked, sorted (CUB's radix sort), and
// every distinct id of every table owns one block, so no atomics are needed. An out-of-range id sets a flag on the device that stops every
// row block before it writes; the caller reads it back when the work is done.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_APPLY_CUH_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_APPLY_CUH_

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/cub.cuh>
#include <vector>

#include "group_lasso/apply.h"
#include "group_lasso/gpu_block.h"
#include "group_lasso/prox.h"

namespace group_lasso {
namespace gpu {

constexpr int kBlock = 128;

// The slot base pointers, by value (kernel arguments live in constant memory).
template <typename T, int N>
struct SlotPointers {
  T* base[N];
};

template <typename T>
__device__ inline T Abs(T x) {
  return x < T(0) ? -x : x;
}

// The step of one row, by one thread block: sums the row's gradient (and
// Hessian) rows at positions[first..last) (position k itself when positions
// is null, the dense case), runs the element-wise first pass, reduces ||s||^2
// over the block and rescales the row by the group factor.
template <typename Rule, typename T>
__device__ inline void BlockRowStep(const StepConfig<Rule, T>& config, int64_t d, T* x,
                                    SlotRows<T, Rule::kNumSlots> rows, const T* grad,
                                    const T* hess, T* stored, bool estimate, int64_t first,
                                    int64_t last, const int64_t* positions) {
  using BlockReduce = cub::BlockReduce<T, kBlock>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  __shared__ T shared_norm2;

  // Fresh row: an all-zero linear slot (read before any thread writes it).
  bool nonzero = false;
  if (Rule::kFreshRows) {
    const T* lin = rows.row[Rule::kNumSlots - 1];
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) nonzero |= lin[j] != T(0);
  }
  const bool fresh = __syncthreads_or(nonzero) == 0 && Rule::kFreshRows;
  const T old_weight = fresh ? T(0) : T(1);
  // Stored Hessian estimate (HessianStore): does the row have one?
  const bool reuse = Rule::kUsesHessian && stored != nullptr && !estimate;
  bool known_local = false;
  if (reuse) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) known_local |= stored[j] != T(0);
  }
  const bool known = __syncthreads_or(known_local) != 0;

  T norm2 = T(0);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    T g = T(0);
    T h = T(0);
    for (int64_t k = first; k < last; ++k) {
      // Positions ascending within an id: the CPU's summation order.
      const int64_t p = positions != nullptr ? positions[k] : k;
      g += grad[p * d + j];
      if (Rule::kUsesHessian && !reuse) h += hess[p * d + j];
    }
    if (Rule::kUsesHessian && stored != nullptr) {
      if (estimate) {
        stored[j] = h;
      } else {
        h = known ? stored[j] : Abs(g);
      }
    }
    const T s = ElementPrePass<Rule>(config.params, config.thresholds, old_weight, g, h,
                                     x + j, rows, j);
    norm2 += s * s;
  }
  const T total = BlockReduce(reduce_storage).Sum(norm2);
  if (threadIdx.x == 0) shared_norm2 = total;
  __syncthreads();
  const T factor = GroupShrinkFactor(Sqrt(shared_norm2), config.thresholds.l21_sqrt_d);
  if (factor == T(0)) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) x[j] = T(0);
  } else if (factor != T(1)) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) x[j] *= factor;
  }
}

// Dense step: block b is row b.
template <typename Rule, typename T>
__global__ void __launch_bounds__(kBlock)
DenseRowStepKernel(StepConfig<Rule, T> config, int64_t d, T* var,
                   SlotPointers<T, Rule::kNumSlots> slots, const T* grad, const T* hess,
                   T* store, bool estimate) {
  const int64_t row = blockIdx.x;
  SlotRows<T, Rule::kNumSlots> rows;
  for (int k = 0; k < Rule::kNumSlots; ++k) rows.row[k] = slots.base[k] + row * d;
  BlockRowStep<Rule, T>(config, d, var + row * d, rows, grad, hess,
                        store != nullptr ? store + row * d : nullptr, estimate, row, row + 1,
                        nullptr);
}

inline int GridFor(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

template <typename T, int N>
SlotPointers<T, N> MakeSlotPointers(T* const* slots) {
  SlotPointers<T, N> p;
  for (int k = 0; k < N; ++k) p.base[k] = slots[k];
  return p;
}

// Dense step: every row of a [num_rows, d] variable, on `stream`.
template <typename Rule, typename T>
cudaError_t LaunchDense(cudaStream_t stream, const StepConfig<Rule, T>& config,
                        int64_t num_rows, int64_t d, T* var, T* const* slots, const T* grad,
                        const T* hess, const HessianStore<T>& store) {
  if (num_rows == 0 || d == 0) return cudaSuccess;
  DenseRowStepKernel<Rule, T><<<num_rows, kBlock, 0, stream>>>(
      config, d, var, MakeSlotPointers<T, Rule::kNumSlots>(slots), grad, hess, store.rows,
      store.estimate);
  return cudaGetLastError();
}

// ------------------------------------------------------------- sparse steps
//
// A sparse step runs over any number of tables at once, with a fixed number
// of launches whatever that number and no host synchronization: every
// table's ids are packed into one array of keys (table << id_bits | id) and
// range-checked (an out-of-range id sets a flag on the device), the keys are
// sorted (one radix sort: rows of a table in id order, tables in order), and
// one kernel runs a block per batch position whose key starts a run, which
// does nothing at all if the flag is set. The caller reads the flag back
// once the work is done (SparseCheck).

// The table of packed position i: the last t with firsts[t] <= i.
__device__ inline int TableOf(const int64_t* firsts, int num_tables, int64_t i) {
  int lo = 0;
  int hi = num_tables - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (firsts[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Packs every table's ids into keys (t << id_bits | id; and each id's
// position within its own batch into positions), flagging the smallest
// out-of-range position.
template <typename Rule, typename T, typename Tindex>
__global__ void PackIdsKernel(void* block, int num_tables, int64_t total, int id_bits,
                              uint64_t* keys, int64_t* positions) {
  using Block = TablesBlock<Rule, T, Tindex>;
  const int64_t* firsts = Block::Firsts(block);
  const DeviceTable<Rule, T, Tindex>* tables = Block::Tables(block, num_tables);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int t = TableOf(firsts, num_tables, i);
    const int64_t local = i - firsts[t];
    // One unsigned comparison catches negative ids too.
    const uint64_t id = static_cast<uint64_t>(static_cast<int64_t>(tables[t].ids[local]));
    const bool valid = id < static_cast<uint64_t>(tables[t].num_rows);
    if (!valid) atomicMin(&Block::Check(block)->bad_position, static_cast<unsigned long long>(i));
    keys[i] = (static_cast<uint64_t>(t) << id_bits) | (valid ? id : 0);
    positions[i] = local;
  }
}

// Records the id at the flagged position, if any (one thread).
template <typename Rule, typename T, typename Tindex>
__global__ void RecordBadIdKernel(void* block, int num_tables) {
  using Block = TablesBlock<Rule, T, Tindex>;
  SparseCheck* check = Block::Check(block);
  if (check->bad_position == kNoBadPosition) return;
  const int64_t i = static_cast<int64_t>(check->bad_position);
  const int64_t* firsts = Block::Firsts(block);
  const int t = TableOf(firsts, num_tables, i);
  check->bad_id = static_cast<long long>(Block::Tables(block, num_tables)[t].ids[i - firsts[t]]);
}

// Block b: sorted position b. If its key starts a run of equal keys, the
// block steps that row of that table with the run's gradient rows; other
// blocks, and every block when an id was out of range, return at once.
template <typename Rule, typename T, typename Tindex>
__global__ void __launch_bounds__(kBlock)
SparseRowStepKernel(void* block, int num_tables, int64_t total, int id_bits,
                    const uint64_t* sorted_keys, const int64_t* sorted_positions) {
  using Block = TablesBlock<Rule, T, Tindex>;
  if (Block::Check(block)->bad_position != kNoBadPosition) return;
  const int64_t b = blockIdx.x;
  const uint64_t key = sorted_keys[b];
  if (b > 0 && sorted_keys[b - 1] == key) return;  // not the first of its run
  int64_t last = b + 1;
  while (last < total && sorted_keys[last] == key) ++last;
  const DeviceTable<Rule, T, Tindex>& table =
      Block::Tables(block, num_tables)[static_cast<int>(key >> id_bits)];
  const int64_t d = table.d;
  const int64_t row = static_cast<int64_t>(key & ((uint64_t{1} << id_bits) - 1));
  SlotRows<T, Rule::kNumSlots> rows;
  for (int k = 0; k < Rule::kNumSlots; ++k) rows.row[k] = table.slots[k] + row * d;
  T* stored = table.store.rows != nullptr ? table.store.rows + row * d : nullptr;
  BlockRowStep<Rule, T>(table.config, d, table.var + row * d, rows, table.grad, table.hess,
                        stored, table.store.estimate, b, last, sorted_positions);
}

// Bits that hold every value in [0, count) (at least 1).
inline int BitsFor(int64_t count) {
  int bits = 1;
  while (bits < 63 && (static_cast<uint64_t>(count - 1) >> bits) != 0) ++bits;
  return bits;
}

// Queues the sparse step of `num_tables` tables on `stream`. `block` is the
// device copy of a TablesBlock (its transfer already queued on `stream`),
// `total` the ids of all tables, `max_rows` the most rows of any table.
// `allocate(bytes)` returns device scratch memory that stays valid until the
// work queued on `stream` has finished (TensorFlow's allocate_temp, or
// cudaMalloc). No host synchronization: once the work is done, the block's
// SparseCheck says whether an id was out of range, and then nothing was
// written.
template <typename Rule, typename T, typename Tindex, typename Allocate>
cudaError_t LaunchSparseTables(cudaStream_t stream, void* block, int num_tables, int64_t total,
                               int64_t max_rows, Allocate&& allocate) {
  if (num_tables == 0 || total == 0) return cudaSuccess;
  // A key holds the table and the id: (bits of the table) + (bits of the
  // largest id) <= 64 for any tables that fit in a device's memory.
  const int id_bits = BitsFor(max_rows);
  const int key_bits = id_bits + (num_tables > 1 ? BitsFor(num_tables) : 0);
  if (key_bits > 64) return cudaErrorInvalidValue;
  bool out_of_memory = false;
  auto take = [&](size_t bytes) {
    void* p = allocate(bytes > 0 ? bytes : 1);
    out_of_memory |= p == nullptr;
    return p;
  };
  auto* keys = static_cast<uint64_t*>(take(total * sizeof(uint64_t)));
  auto* positions = static_cast<int64_t*>(take(total * sizeof(int64_t)));
  auto* sorted_keys = static_cast<uint64_t*>(take(total * sizeof(uint64_t)));
  auto* sorted_positions = static_cast<int64_t*>(take(total * sizeof(int64_t)));
  if (out_of_memory) return cudaErrorMemoryAllocation;
  // 1. Pack and range-check, before anything is written.
  PackIdsKernel<Rule, T, Tindex><<<GridFor(total), 256, 0, stream>>>(
      block, num_tables, total, id_bits, keys, positions);
  RecordBadIdKernel<Rule, T, Tindex><<<1, 1, 0, stream>>>(block, num_tables);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  // 2. Sort (key, position) pairs by key over the bits in use; radix sorts
  // are stable, so positions stay ascending within an id. (Keys of a
  // flagged batch are never read.)
  size_t sort_bytes = 0;
  e = cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, sorted_keys, positions,
                                      sorted_positions, total, 0, key_bits, stream);
  if (e != cudaSuccess) return e;
  void* sort_temp = take(sort_bytes);
  if (out_of_memory) return cudaErrorMemoryAllocation;
  e = cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, keys, sorted_keys, positions,
                                      sorted_positions, total, 0, key_bits, stream);
  if (e != cudaSuccess) return e;
  // 3. A block per sorted position; the first of each run does the row.
  SparseRowStepKernel<Rule, T, Tindex><<<static_cast<unsigned>(total), kBlock, 0, stream>>>(
      block, num_tables, total, id_bits, sorted_keys, sorted_positions);
  return cudaGetLastError();
}

// Result of a one-table sparse launch: -1, or the position of the first id
// outside [0, num_rows) (then nothing was written) and that id.
struct SparseStatus {
  cudaError_t error = cudaSuccess;
  int64_t bad_position = -1;
  int64_t bad_id = 0;
};

// Sparse step of one table on the rows named by ids[0..n) (device memory),
// through LaunchSparseTables, then one host synchronization to read its
// check. (The multi-table TensorFlow kernel reads the check without blocking.)
template <typename Rule, typename T, typename Tindex, typename Allocate>
SparseStatus LaunchSparse(cudaStream_t stream, const StepConfig<Rule, T>& config,
                          int64_t num_rows, int64_t d, T* var, T* const* slots,
                          const T* grad, const T* hess, const HessianStore<T>& store,
                          const Tindex* ids, int64_t n, Allocate&& allocate) {
  SparseStatus status;
  if (n == 0 || d == 0) return status;
  using Block = TablesBlock<Rule, T, Tindex>;
  DeviceTable<Rule, T, Tindex> table;
  table.config = config;
  table.d = d;
  table.num_rows = num_rows;
  table.var = var;
  for (int k = 0; k < Rule::kNumSlots; ++k) table.slots[k] = slots[k];
  table.grad = grad;
  table.hess = hess;
  table.store = store;
  table.ids = ids;
  table.n = n;
  std::vector<char> host(Block::Bytes(1));
  Block::Fill(host.data(), &table, 1);
  void* block = allocate(host.size());
  if (block == nullptr) {
    status.error = cudaErrorMemoryAllocation;
    return status;
  }
  status.error = cudaMemcpyAsync(block, host.data(), host.size(), cudaMemcpyHostToDevice, stream);
  if (status.error != cudaSuccess) return status;
  status.error = LaunchSparseTables<Rule, T, Tindex>(stream, block, 1, n, num_rows, allocate);
  if (status.error != cudaSuccess) return status;
  SparseCheck check;
  status.error = cudaMemcpyAsync(&check, Block::Check(block), sizeof(check),
                                 cudaMemcpyDeviceToHost, stream);
  if (status.error == cudaSuccess) status.error = cudaStreamSynchronize(stream);
  if (status.error == cudaSuccess && check.bad_position != kNoBadPosition) {
    status.bad_position = static_cast<int64_t>(check.bad_position);
    status.bad_id = static_cast<int64_t>(check.bad_id);
  }
  return status;
}

}  // namespace gpu
}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_APPLY_CUH_
