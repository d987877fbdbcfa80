// Device functors of the group-lasso training ops, TensorFlow's functor
// pattern: declared here for any Device, specialized for the CPU in
// group_lasso_kernels.cc and for the GPU in group_lasso_kernels.cu.cc. The
// math itself lives once, in cc/group_lasso/.
#ifndef GROUP_LASSO_TF_CC_KERNELS_GROUP_LASSO_FUNCTORS_H_
#define GROUP_LASSO_TF_CC_KERNELS_GROUP_LASSO_FUNCTORS_H_

#include <cstdint>

#include "group_lasso/apply.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace group_lasso_tf {
namespace functor {

// Every row of var ([rows, dim]) and of its slots, in place. `hess` (the
// layout of grad) and `store` (AdaHessian's stored estimate, if any) are
// read only by rules with kUsesHessian.
template <typename Device, typename T, typename Rule>
struct ApplyDense {
  void operator()(::tensorflow::OpKernelContext* ctx,
                  const group_lasso::StepConfig<Rule, T>& config,
                  int64_t rows, int64_t dim, T* var, T* const* slots,
                  const T* grad, const T* hess,
                  const group_lasso::HessianStore<T>& store);
};

// The rows named by ids (n of them, duplicates summed). Fails with
// InvalidArgument, before writing anything, if an id is outside [0, rows).
template <typename Device, typename T, typename Tindex, typename Rule>
struct ApplySparse {
  ::tensorflow::Status operator()(
      ::tensorflow::OpKernelContext* ctx,
      const group_lasso::StepConfig<Rule, T>& config, int64_t rows,
      int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,
      const group_lasso::HessianStore<T>& store, const Tindex* ids, int64_t n);
};

// The multi-table sparse step on the GPU (GOOGLE_CUDA builds only, defined
// in group_lasso_kernels.cu.cc): copies the tables' descriptors `host` (a
// gpu::TablesBlock of num_tables tables, in pinned memory) to `device`,
// queues gpu::LaunchSparseTables on the op's stream, then copies the check
// it leaves back into `host`. Nothing synchronizes with the host: the caller
// reads the check once the stream has done the work.
template <typename T, typename Tindex, typename Rule>
struct ApplySparseTablesGpu {
  ::tensorflow::Status operator()(::tensorflow::OpKernelContext* ctx, void* host, void* device,
                                  int num_tables, int64_t total, int64_t max_rows);
};

}  // namespace functor
}  // namespace group_lasso_tf

#endif  // GROUP_LASSO_TF_CC_KERNELS_GROUP_LASSO_FUNCTORS_H_
