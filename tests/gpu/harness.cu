// Standalone CUDA harness: the device code of cc/group_lasso/gpu_apply.cuh,
// compiled by nvcc without TensorFlow, behind a small C API that
// tests/gpu/run_harness.py drives through ctypes (host arrays in and out).
//
//   gl_gpu_device_count()                     -> number of CUDA devices (0: none)
//   gl_gpu_apply(...)                         -> one step, host arrays updated in place
//   gl_gpu_apply_tables(...)                  -> one sparse step of several tables
//   gl_gpu_time_sparse(...), gl_gpu_copy_gbps  -> the bandwidth benchmark
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "group_lasso/checks.h"
#include "group_lasso/gpu_apply.cuh"

namespace {

using group_lasso::HessianStore;
using group_lasso::StepConfig;

// Device scratch memory freed at the end of a call (after a synchronize).
struct DeviceArena {
  std::vector<void*> blocks;
  void* operator()(size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes > 0 ? bytes : 1) != cudaSuccess) return nullptr;
    blocks.push_back(p);
    return p;
  }
  ~DeviceArena() {
    for (void* p : blocks) cudaFree(p);
  }
};

int Fail(char* err, int err_len, const std::string& message) {
  if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", message.c_str());
  return 1;
}

template <typename T>
void* Upload(DeviceArena* arena, const void* host, size_t bytes) {
  void* p = (*arena)(bytes);
  if (p != nullptr && bytes > 0) cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
  return p;
}

// One step on host arrays: var and slots ([rows, d]) are copied to the
// device, updated there and copied back. n < 0: dense; else ids[0..n).
template <typename Rule, typename T>
int Apply(int64_t rows, int64_t d, void* var_host, void** slots_host, const void* grad_host,
          const void* hess_host, void* store_host, int estimate, const int64_t* ids_host,
          int64_t n, const double* common, const double* hyper_in, int nesterov, int repeats,
          float* milliseconds, char* err, int err_len) {
  T hyper[Rule::kNumHyper > 0 ? Rule::kNumHyper : 1];
  for (int k = 0; k < Rule::kNumHyper; ++k) hyper[k] = static_cast<T>(hyper_in[k]);
  const std::string bad = group_lasso::CheckHyper<Rule, T>(
      static_cast<T>(common[0]), static_cast<T>(common[1]), static_cast<T>(common[2]),
      static_cast<T>(common[3]), hyper);
  if (!bad.empty()) return Fail(err, err_len, bad);
  const auto config = group_lasso::MakeStepConfig<Rule, T>(
      static_cast<T>(common[0]), static_cast<T>(common[1]), static_cast<T>(common[2]),
      static_cast<T>(common[3]), hyper, nesterov != 0, d);
  DeviceArena arena;
  const size_t table_bytes = static_cast<size_t>(rows * d) * sizeof(T);
  const size_t grad_rows = n < 0 ? rows : n;
  const size_t grad_bytes = grad_rows * d * sizeof(T);
  T* var = static_cast<T*>(Upload<T>(&arena, var_host, table_bytes));
  T* slots[Rule::kNumSlots];
  for (int k = 0; k < Rule::kNumSlots; ++k) {
    slots[k] = static_cast<T*>(Upload<T>(&arena, slots_host[k], table_bytes));
  }
  const T* grad = static_cast<const T*>(Upload<T>(&arena, grad_host, grad_bytes));
  const T* hess = hess_host != nullptr
                      ? static_cast<const T*>(Upload<T>(&arena, hess_host, grad_bytes))
                      : nullptr;
  HessianStore<T> store;
  if (store_host != nullptr) {
    store.rows = static_cast<T*>(Upload<T>(&arena, store_host, table_bytes));
    store.estimate = estimate != 0;
  }
  const int64_t* ids = n >= 0 ? static_cast<const int64_t*>(
                                    Upload<int64_t>(&arena, ids_host, n * sizeof(int64_t)))
                              : nullptr;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, 0);
  for (int r = 0; r < (repeats > 0 ? repeats : 1); ++r) {
    if (n < 0) {
      const cudaError_t e =
          group_lasso::gpu::LaunchDense<Rule, T>(0, config, rows, d, var, slots, grad, hess, store);
      if (e != cudaSuccess) return Fail(err, err_len, cudaGetErrorString(e));
    } else {
      const auto status = group_lasso::gpu::LaunchSparse<Rule, T, int64_t>(
          0, config, rows, d, var, slots, grad, hess, store, ids, n, arena);
      if (status.error != cudaSuccess) return Fail(err, err_len, cudaGetErrorString(status.error));
      if (status.bad_position >= 0) {
        return Fail(err, err_len,
                    "indices[" + std::to_string(status.bad_position) + "] = " +
                        std::to_string(status.bad_id) + " is not in [0, " + std::to_string(rows) +
                        ")");
      }
    }
  }
  cudaEventRecord(stop, 0);
  const cudaError_t e = cudaEventSynchronize(stop);
  if (e != cudaSuccess) return Fail(err, err_len, cudaGetErrorString(e));
  if (milliseconds != nullptr) {
    cudaEventElapsedTime(milliseconds, start, stop);
    *milliseconds /= (repeats > 0 ? repeats : 1);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaMemcpy(var_host, var, table_bytes, cudaMemcpyDeviceToHost);
  for (int k = 0; k < Rule::kNumSlots; ++k) {
    cudaMemcpy(slots_host[k], slots[k], table_bytes, cudaMemcpyDeviceToHost);
  }
  if (store_host != nullptr) cudaMemcpy(store_host, store.rows, table_bytes, cudaMemcpyDeviceToHost);
  return 0;
}

template <typename Rule>
int ApplyTyped(int is_double, int64_t rows, int64_t d, void* var, void** slots, const void* grad,
               const void* hess, void* store, int estimate, const int64_t* ids, int64_t n,
               const double* common, const double* hyper, int nesterov, int repeats, float* ms,
               char* err, int err_len) {
  if (Rule::kUsesHessian != (hess != nullptr || (store != nullptr && !estimate))) {
    return Fail(err, err_len, Rule::kUsesHessian ? "this rule needs hess"
                                                 : "hess is only for the adahessian rule");
  }
  if (is_double) {
    return Apply<Rule, double>(rows, d, var, slots, grad, hess, store, estimate, ids, n, common,
                               hyper, nesterov, repeats, ms, err, err_len);
  }
  return Apply<Rule, float>(rows, d, var, slots, grad, hess, store, estimate, ids, n, common,
                            hyper, nesterov, repeats, ms, err, err_len);
}

// One sparse step of several tables in one launch (LaunchSparseTables, as
// the multi-table TensorFlow op runs it): table t has rows[t] x dims[t]
// values in vars[t], its slots at slots[t * kNumSlots + k], counts[t] ids
// and gradient rows, and strengths common[4t .. 4t+4) (lr, l1, l21, l2).
// bad[0], bad[1]: the packed position and the id of the first out-of-range
// id, or -1 and 0.
template <typename Rule, typename T>
int ApplyTables(int num_tables, const int64_t* rows, const int64_t* dims, void** vars_host,
                void** slots_host, void** grads_host, void** ids_host, const int64_t* counts,
                const double* common, const double* hyper_in, int flag, long long* bad,
                char* err, int err_len) {
  using Block = group_lasso::gpu::TablesBlock<Rule, T, int64_t>;
  T hyper[Rule::kNumHyper > 0 ? Rule::kNumHyper : 1];
  for (int k = 0; k < Rule::kNumHyper; ++k) hyper[k] = static_cast<T>(hyper_in[k]);
  DeviceArena arena;
  std::vector<group_lasso::gpu::DeviceTable<Rule, T, int64_t>> tables(num_tables);
  int64_t max_rows = 1;
  for (int t = 0; t < num_tables; ++t) {
    const double* c = common + 4 * t;
    const std::string bad_hyper = group_lasso::CheckHyper<Rule, T>(
        static_cast<T>(c[0]), static_cast<T>(c[1]), static_cast<T>(c[2]), static_cast<T>(c[3]),
        hyper);
    if (!bad_hyper.empty()) return Fail(err, err_len, bad_hyper);
    auto& table = tables[t];
    table.config = group_lasso::MakeStepConfig<Rule, T>(
        static_cast<T>(c[0]), static_cast<T>(c[1]), static_cast<T>(c[2]), static_cast<T>(c[3]),
        hyper, flag != 0, dims[t]);
    table.d = dims[t];
    table.num_rows = rows[t];
    const size_t table_bytes = static_cast<size_t>(rows[t] * dims[t]) * sizeof(T);
    table.var = static_cast<T*>(Upload<T>(&arena, vars_host[t], table_bytes));
    for (int k = 0; k < Rule::kNumSlots; ++k) {
      table.slots[k] = static_cast<T*>(
          Upload<T>(&arena, slots_host[t * Rule::kNumSlots + k], table_bytes));
    }
    table.grad = static_cast<const T*>(
        Upload<T>(&arena, grads_host[t], static_cast<size_t>(counts[t] * dims[t]) * sizeof(T)));
    table.ids = static_cast<const int64_t*>(
        Upload<int64_t>(&arena, ids_host[t], counts[t] * sizeof(int64_t)));
    table.n = counts[t];
    max_rows = rows[t] > max_rows ? rows[t] : max_rows;
  }
  std::vector<char> host(Block::Bytes(num_tables));
  const int64_t total = Block::Fill(host.data(), tables.data(), num_tables);
  void* block = Upload<char>(&arena, host.data(), host.size());
  cudaError_t e = group_lasso::gpu::LaunchSparseTables<Rule, T, int64_t>(
      0, block, num_tables, total, max_rows, arena);
  if (e != cudaSuccess) return Fail(err, err_len, cudaGetErrorString(e));
  group_lasso::gpu::SparseCheck check;
  e = cudaMemcpy(&check, Block::Check(block), sizeof(check), cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return Fail(err, err_len, cudaGetErrorString(e));
  const bool flagged = check.bad_position != group_lasso::gpu::kNoBadPosition;
  bad[0] = flagged ? static_cast<long long>(check.bad_position) : -1;
  bad[1] = flagged ? check.bad_id : 0;
  for (int t = 0; t < num_tables; ++t) {
    const size_t table_bytes = static_cast<size_t>(rows[t] * dims[t]) * sizeof(T);
    cudaMemcpy(vars_host[t], tables[t].var, table_bytes, cudaMemcpyDeviceToHost);
    for (int k = 0; k < Rule::kNumSlots; ++k) {
      cudaMemcpy(slots_host[t * Rule::kNumSlots + k], tables[t].slots[k], table_bytes,
                 cudaMemcpyDeviceToHost);
    }
  }
  return 0;
}

}  // namespace

extern "C" {

int gl_gpu_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

const char* gl_gpu_device_name() {
  static char name[256] = {0};
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) std::snprintf(name, sizeof(name), "%s", prop.name);
  return name;
}

// rule: the kName of a rule of the table (GROUP_LASSO_RULES in rules.h).
// common: lr, l1, l21, l2; hyper: the rule's hyperparameters (HYPER_NAMES).
// ms (may be null): mean time of one step over `repeats` steps on the device.
int gl_gpu_apply(const char* rule, int is_double, int64_t rows, int64_t d, void* var,
                 void** slots, const void* grad, const void* hess, void* store, int estimate,
                 const int64_t* ids, int64_t n, const double* common, const double* hyper,
                 int nesterov, int repeats, float* ms, char* err, int err_len) {
  const std::string r(rule);
#define GL_RULE(RULE)                                                                      \
  if (r == group_lasso::RULE::kName) {                                                     \
    return ApplyTyped<group_lasso::RULE>(is_double, rows, d, var, slots, grad, hess, store, \
                                         estimate, ids, n, common, hyper, nesterov, repeats, \
                                         ms, err, err_len);                                 \
  }
  GROUP_LASSO_RULES(GL_RULE)
#undef GL_RULE
  return Fail(err, err_len, "unknown rule " + r);
}

// Sparse rules only (a rule with a Hessian has no multi-table step).
int gl_gpu_apply_tables(const char* rule, int is_double, int num_tables, const int64_t* rows,
                        const int64_t* dims, void** vars, void** slots, void** grads, void** ids,
                        const int64_t* counts, const double* common, const double* hyper,
                        int flag, long long* bad, char* err, int err_len) {
  const std::string r(rule);
#define GL_RULE(RULE)                                                                         \
  if (r == group_lasso::RULE::kName) {                                                        \
    if (group_lasso::RULE::kUsesHessian) return Fail(err, err_len, "no multi-table " + r);    \
    return is_double ? ApplyTables<group_lasso::RULE, double>(num_tables, rows, dims, vars,   \
                                                              slots, grads, ids, counts,      \
                                                              common, hyper, flag, bad, err,  \
                                                              err_len)                        \
                     : ApplyTables<group_lasso::RULE, float>(num_tables, rows, dims, vars,    \
                                                             slots, grads, ids, counts,       \
                                                             common, hyper, flag, bad, err,   \
                                                             err_len);                        \
  }
  GROUP_LASSO_RULES(GL_RULE)
#undef GL_RULE
  return Fail(err, err_len, "unknown rule " + r);
}

// Device-to-device copy bandwidth in GB/s (bytes read + written), over `bytes`.
double gl_gpu_copy_gbps(int64_t bytes, int repeats) {
  void* a = nullptr;
  void* b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return -1;
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, 0);
  for (int r = 0; r < repeats; ++r) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(stop, 0);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes * repeats / (ms * 1e6);
}

}  // extern "C"
