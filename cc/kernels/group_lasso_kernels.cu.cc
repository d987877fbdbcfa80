// GPU functors of the group-lasso training ops: TensorFlow's functor pattern
// (ApplyDense / ApplySparse specialized for Eigen::GpuDevice, and the
// multi-table ApplySparseTablesGpu), launching the
// framework-free CUDA drivers of cc/group_lasso/gpu_apply.cuh on the op's
// stream. The OpKernel around them (input checks, locking, copy-on-write) is
// the one of group_lasso_kernels.cc, shared with the CPU.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <vector>

#include "group_lasso/gpu_apply.cuh"
#include "kernels/group_lasso_functors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace group_lasso_tf {
namespace functor {

using GPUDevice = Eigen::GpuDevice;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;

template <typename T, typename Rule>
void DenseOnGpu(OpKernelContext* ctx, const group_lasso::StepConfig<Rule, T>& config,
                int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad,
                const T* hess, const group_lasso::HessianStore<T>& store) {
  const cudaError_t e = group_lasso::gpu::LaunchDense<Rule, T>(
      ctx->eigen_gpu_device().stream(), config, rows, dim, var, slots, grad, hess, store);
  if (e != cudaSuccess) {
    ctx->SetStatus(errors::Internal("group-lasso GPU kernel: ", cudaGetErrorString(e)));
  }
}

// Device scratch memory for the launchers of gpu_apply.cuh (null when out of
// memory). The tensors stay referenced until the allocator goes out of scope
// at the end of Compute; TensorFlow's GPU allocator only reuses them for work
// queued later on the same stream.
struct ScratchAllocator {
  OpKernelContext* ctx;
  std::vector<Tensor> tensors;

  void* operator()(size_t bytes) {
    Tensor t;
    if (!ctx->allocate_temp(::tensorflow::DT_INT8, TensorShape({static_cast<int64_t>(bytes)}),
                            &t).ok()) {
      return nullptr;
    }
    tensors.push_back(t);
    return t.flat<int8_t>().data();
  }
};

template <typename T, typename Tindex, typename Rule>
Status SparseOnGpu(OpKernelContext* ctx, const group_lasso::StepConfig<Rule, T>& config,
                   int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad,
                   const T* hess, const group_lasso::HessianStore<T>& store, const Tindex* ids,
                   int64_t n) {
  ScratchAllocator allocate{ctx};
  const group_lasso::gpu::SparseStatus status = group_lasso::gpu::LaunchSparse<Rule, T, Tindex>(
      ctx->eigen_gpu_device().stream(), config, rows, dim, var, slots, grad, hess, store, ids,
      n, allocate);
  if (status.error != cudaSuccess) {
    return errors::Internal("group-lasso GPU kernel: ", cudaGetErrorString(status.error));
  }
  if (status.bad_position >= 0) {
    return errors::InvalidArgument("indices[", status.bad_position, "] = ", status.bad_id,
                                   " is not in [0, ", rows, "): the variable has ", rows,
                                   " rows");
  }
  return ::tensorflow::OkStatus();
}

template <typename T, typename Tindex, typename Rule>
Status ApplySparseTablesGpu<T, Tindex, Rule>::operator()(OpKernelContext* ctx, void* host,
                                                        void* device, int num_tables,
                                                        int64_t total, int64_t max_rows) {
  using Block = group_lasso::gpu::TablesBlock<Rule, T, Tindex>;
  const cudaStream_t stream = ctx->eigen_gpu_device().stream();
  ScratchAllocator allocate{ctx};
  cudaError_t e = cudaMemcpyAsync(device, host, Block::Bytes(num_tables),
                                  cudaMemcpyHostToDevice, stream);
  if (e == cudaSuccess) {
    e = group_lasso::gpu::LaunchSparseTables<Rule, T, Tindex>(stream, device, num_tables, total,
                                                             max_rows, allocate);
  }
  if (e == cudaSuccess) {
    e = cudaMemcpyAsync(Block::Check(host), Block::Check(device),
                        sizeof(group_lasso::gpu::SparseCheck), cudaMemcpyDeviceToHost, stream);
  }
  if (e != cudaSuccess) {
    return errors::Internal("group-lasso GPU kernel: ", cudaGetErrorString(e));
  }
  return ::tensorflow::OkStatus();
}

#define GL_DEFINE_GPU_FUNCTORS(RULE, T)                                                      \
  template <>                                                                                \
  void ApplyDense<GPUDevice, T, group_lasso::RULE>::operator()(                              \
      OpKernelContext* ctx, const group_lasso::StepConfig<group_lasso::RULE, T>& config,     \
      int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,      \
      const group_lasso::HessianStore<T>& store) {                                           \
    DenseOnGpu<T, group_lasso::RULE>(ctx, config, rows, dim, var, slots, grad, hess, store); \
  }                                                                                          \
  template struct ApplySparseTablesGpu<T, int32_t, group_lasso::RULE>;                      \
  template struct ApplySparseTablesGpu<T, int64_t, group_lasso::RULE>;                      \
  template <>                                                                                \
  Status ApplySparse<GPUDevice, T, int32_t, group_lasso::RULE>::operator()(                  \
      OpKernelContext* ctx, const group_lasso::StepConfig<group_lasso::RULE, T>& config,     \
      int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,      \
      const group_lasso::HessianStore<T>& store, const int32_t* ids, int64_t n) {            \
    return SparseOnGpu<T, int32_t, group_lasso::RULE>(ctx, config, rows, dim, var, slots,    \
                                                       grad, hess, store, ids, n);           \
  }                                                                                          \
  template <>                                                                                \
  Status ApplySparse<GPUDevice, T, int64_t, group_lasso::RULE>::operator()(                  \
      OpKernelContext* ctx, const group_lasso::StepConfig<group_lasso::RULE, T>& config,     \
      int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,      \
      const group_lasso::HessianStore<T>& store, const int64_t* ids, int64_t n) {            \
    return SparseOnGpu<T, int64_t, group_lasso::RULE>(ctx, config, rows, dim, var, slots,    \
                                                       grad, hess, store, ids, n);           \
  }

#define GL_DEFINE_GPU_FUNCTORS_ALL_TYPES(RULE) \
  GL_DEFINE_GPU_FUNCTORS(RULE, float)          \
  GL_DEFINE_GPU_FUNCTORS(RULE, double)

GROUP_LASSO_RULES(GL_DEFINE_GPU_FUNCTORS_ALL_TYPES)

#undef GL_DEFINE_GPU_FUNCTORS_ALL_TYPES
#undef GL_DEFINE_GPU_FUNCTORS

}  // namespace functor
}  // namespace group_lasso_tf

#endif  // GOOGLE_CUDA
