// CUDA drivers of the row step (prox.h), framework-free: the TensorFlow GPU
// functors (cc/kernels/group_lasso_kernels.cu.cc) and the standalone harness
// (tests/gpu/harness.cu) both launch these.
//
// One thread block per row: the block reads the row of var and of every
// slot once, sums the gradient (and Hessian) rows of a sparse id's
// duplicates on the fly, computes the element-wise part of the step
// (ElementPrePass, the same function the CPU runs), reduces ||s||^2 over the
// block and rescales the row by the group factor. Sparse batches are sorted
// by id on the device first (CUB radix sort, then run-length encoding), so
// every id owns one block and no atomics are needed. Out-of-range ids are
// found before anything is written and reported to the caller.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_APPLY_CUH_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_APPLY_CUH_

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/cub.cuh>

#include "group_lasso/apply.h"
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

// One block per row: dense (block b is row b) or sparse (block b is the b-th
// distinct id; its positions in the batch are positions[starts[b]..starts[b+1])).
template <typename Rule, typename T, typename Tindex, bool kSparse>
__global__ void __launch_bounds__(kBlock)
RowStepKernel(StepConfig<Rule, T> config, int64_t d, T* var,
              SlotPointers<T, Rule::kNumSlots> slots, const T* grad,
              const T* hess, T* store, bool estimate, const Tindex* ids,
              const int64_t* starts, const int64_t* positions) {
  using BlockReduce = cub::BlockReduce<T, kBlock>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  __shared__ T shared_norm2;

  const int64_t b = blockIdx.x;
  const int64_t row = kSparse ? static_cast<int64_t>(ids[b]) : b;
  const int64_t first = kSparse ? starts[b] : b;
  const int64_t last = kSparse ? starts[b + 1] : b + 1;
  T* x = var + row * d;
  SlotRows<T, Rule::kNumSlots> rows;
  for (int k = 0; k < Rule::kNumSlots; ++k) rows.row[k] = slots.base[k] + row * d;

  // Fresh row: an all-zero linear slot (read before any thread writes it).
  bool nonzero = false;
  if (Rule::kFreshRows) {
    const T* lin = rows.row[Rule::kNumSlots - 1];
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) nonzero |= lin[j] != T(0);
  }
  const bool fresh = __syncthreads_or(nonzero) == 0 && Rule::kFreshRows;
  const T old_weight = fresh ? T(0) : T(1);
  // Stored Hessian estimate (HessianStore): does the row have one?
  T* stored = store != nullptr ? store + row * d : nullptr;
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
      const int64_t p = kSparse ? positions[k] : k;
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

// Smallest position whose id is outside [0, num_rows), via atomicMin.
template <typename Tindex>
__global__ void FirstOutOfRangeKernel(const Tindex* ids, int64_t n, int64_t num_rows,
                                      unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (static_cast<uint64_t>(static_cast<int64_t>(ids[i])) >= static_cast<uint64_t>(num_rows)) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
    }
  }
}

template <typename I>
__global__ void IotaKernel(I* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = i;
  }
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
  RowStepKernel<Rule, T, int32_t, false><<<num_rows, kBlock, 0, stream>>>(
      config, d, var, MakeSlotPointers<T, Rule::kNumSlots>(slots), grad, hess, store.rows,
      store.estimate, nullptr, nullptr, nullptr);
  return cudaGetLastError();
}

// Result of a sparse launch: -1, or the position of the first id outside
// [0, num_rows) (then nothing was written) and that id.
struct SparseStatus {
  cudaError_t error = cudaSuccess;
  int64_t bad_position = -1;
  int64_t bad_id = 0;
};

// Sparse step on the rows named by ids[0..n) (device memory). `allocate(bytes)`
// returns device scratch memory that stays valid until the work queued on
// `stream` has finished (TensorFlow's allocate_temp, or cudaMalloc). Two
// host synchronizations: the range check and the number of distinct ids.
template <typename Rule, typename T, typename Tindex, typename Allocate>
SparseStatus LaunchSparse(cudaStream_t stream, const StepConfig<Rule, T>& config,
                          int64_t num_rows, int64_t d, T* var, T* const* slots,
                          const T* grad, const T* hess, const HessianStore<T>& store,
                          const Tindex* ids, int64_t n, Allocate&& allocate) {
  SparseStatus status;
#define GL_CUDA_RETURN_IF_ERROR(expr)     \
  do {                                    \
    status.error = (expr);                \
    if (status.error != cudaSuccess) return status; \
  } while (0)
  if (n == 0 || d == 0) return status;
  bool out_of_memory = false;
  auto take = [&](size_t bytes) {
    void* p = allocate(bytes > 0 ? bytes : 1);
    out_of_memory |= p == nullptr;
    return p;
  };
  // 1. Range check, before anything is written.
  auto* first_bad = static_cast<unsigned long long*>(take(sizeof(unsigned long long)));
  if (out_of_memory) GL_CUDA_RETURN_IF_ERROR(cudaErrorMemoryAllocation);
  const unsigned long long none = static_cast<unsigned long long>(n);
  GL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(first_bad, &none, sizeof(none),
                                          cudaMemcpyHostToDevice, stream));
  FirstOutOfRangeKernel<<<GridFor(n), 256, 0, stream>>>(ids, n, num_rows, first_bad);
  unsigned long long bad = none;
  GL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&bad, first_bad, sizeof(bad),
                                          cudaMemcpyDeviceToHost, stream));
  GL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (bad < none) {
    Tindex id = 0;
    GL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&id, ids + bad, sizeof(Tindex),
                                            cudaMemcpyDeviceToHost, stream));
    GL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    status.bad_position = static_cast<int64_t>(bad);
    status.bad_id = static_cast<int64_t>(id);
    return status;
  }
  // 2. Sort (id, position) pairs by id; positions stay ascending within an id.
  auto* positions_in = static_cast<int64_t*>(take(n * sizeof(int64_t)));
  auto* positions = static_cast<int64_t*>(take(n * sizeof(int64_t)));
  auto* sorted_ids = static_cast<Tindex*>(take(n * sizeof(Tindex)));
  auto* unique_ids = static_cast<Tindex*>(take(n * sizeof(Tindex)));
  auto* counts = static_cast<int64_t*>(take(n * sizeof(int64_t)));
  auto* starts = static_cast<int64_t*>(take((n + 1) * sizeof(int64_t)));
  auto* num_runs_device = static_cast<int64_t*>(take(sizeof(int64_t)));
  if (out_of_memory) GL_CUDA_RETURN_IF_ERROR(cudaErrorMemoryAllocation);
  IotaKernel<<<GridFor(n), 256, 0, stream>>>(positions_in, n);
  int end_bit = 1;
  while (end_bit < 63 && (static_cast<uint64_t>(num_rows - 1) >> end_bit) != 0) ++end_bit;
  size_t sort_bytes = 0;
  GL_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, ids, sorted_ids, positions_in, positions, n, 0, end_bit, stream));
  void* sort_temp = take(sort_bytes);
  if (out_of_memory) GL_CUDA_RETURN_IF_ERROR(cudaErrorMemoryAllocation);
  GL_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      sort_temp, sort_bytes, ids, sorted_ids, positions_in, positions, n, 0, end_bit, stream));
  // 3. Distinct ids, their counts, and the start of each run.
  size_t rle_bytes = 0;
  GL_CUDA_RETURN_IF_ERROR(cub::DeviceRunLengthEncode::Encode(
      nullptr, rle_bytes, sorted_ids, unique_ids, counts, num_runs_device, n, stream));
  void* rle_temp = take(rle_bytes);
  if (out_of_memory) GL_CUDA_RETURN_IF_ERROR(cudaErrorMemoryAllocation);
  GL_CUDA_RETURN_IF_ERROR(cub::DeviceRunLengthEncode::Encode(
      rle_temp, rle_bytes, sorted_ids, unique_ids, counts, num_runs_device, n, stream));
  int64_t num_runs = 0;
  GL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&num_runs, num_runs_device, sizeof(int64_t),
                                          cudaMemcpyDeviceToHost, stream));
  GL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  GL_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(starts, 0, sizeof(int64_t), stream));
  size_t scan_bytes = 0;
  GL_CUDA_RETURN_IF_ERROR(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, counts,
                                                        starts + 1, num_runs, stream));
  void* scan_temp = take(scan_bytes);
  if (out_of_memory) GL_CUDA_RETURN_IF_ERROR(cudaErrorMemoryAllocation);
  GL_CUDA_RETURN_IF_ERROR(cub::DeviceScan::InclusiveSum(scan_temp, scan_bytes, counts,
                                                        starts + 1, num_runs, stream));
  // 4. One block per distinct id.
  RowStepKernel<Rule, T, Tindex, true><<<num_runs, kBlock, 0, stream>>>(
      config, d, var, MakeSlotPointers<T, Rule::kNumSlots>(slots), grad, hess, store.rows,
      store.estimate, unique_ids, starts, positions);
  status.error = cudaGetLastError();
  return status;
#undef GL_CUDA_RETURN_IF_ERROR
}

}  // namespace gpu
}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_GPU_APPLY_CUH_
