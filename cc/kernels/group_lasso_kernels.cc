// OpKernels of the group-lasso training ops (see cc/ops/) and their CPU
// functors.
//
// One kernel class serves every optimizer: the moment rule (rules.h) is a
// template parameter, so input layout, validation, locking and copy-on-write
// are written once. Order of work in Compute: look up and lock the
// variables, validate every input, copy-on-write, then update. Nothing is
// written before all checks have passed.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <string>

#include "group_lasso/apply.h"
#include "group_lasso/checks.h"
#include "kernels/group_lasso_functors.h"
#include "kernels/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace group_lasso_tf {

using ::tensorflow::DataTypeString;
using ::tensorflow::DataTypeToEnum;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
namespace errors = ::tensorflow::errors;

using CPUDevice = Eigen::ThreadPoolDevice;
#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;
#endif

namespace functor {

// Runs fn over [0, total) on TensorFlow's intra-op thread pool.
struct IntraOpFor {
  OpKernelContext* ctx;
  template <typename Fn>
  void operator()(int64_t total, int64_t cost_per_unit, Fn&& fn) const {
    if (total <= 0) return;
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, total,
                        cost_per_unit, fn);
  }
};

template <typename T, typename Rule>
struct ApplyDense<CPUDevice, T, Rule> {
  void operator()(OpKernelContext* ctx,
                  const group_lasso::StepConfig<Rule, T>& config,
                  int64_t rows, int64_t dim, T* var, T* const* slots,
                  const T* grad, const T* hess,
                  const group_lasso::HessianStore<T>& store) {
    group_lasso::ApplyDense(config, rows, dim, var, slots, grad, hess,
                            IntraOpFor{ctx}, store);
  }
};

template <typename T, typename Tindex, typename Rule>
struct ApplySparse<CPUDevice, T, Tindex, Rule> {
  Status operator()(OpKernelContext* ctx,
                    const group_lasso::StepConfig<Rule, T>& config,
                    int64_t rows, int64_t dim, T* var, T* const* slots,
                    const T* grad, const T* hess,
                    const group_lasso::HessianStore<T>& store,
                    const Tindex* ids, int64_t n) {
    const int64_t bad = group_lasso::FirstOutOfRange(ids, n, rows);
    if (bad >= 0) {
      return errors::InvalidArgument("indices[", bad, "] = ", ids[bad],
                                     " is not in [0, ", rows,
                                     "): the variable has ", rows, " rows");
    }
    const group_lasso::IdGroups<Tindex> groups =
        group_lasso::GroupIds(ids, n);
    group_lasso::ApplySparse(config, dim, var, slots, grad, hess, groups,
                             IntraOpFor{ctx}, store);
    return ::tensorflow::OkStatus();
  }
};

#if GOOGLE_CUDA
// Defined in group_lasso_kernels.cu.cc.
#define GL_DECLARE_GPU_FUNCTORS(RULE, T)                                                 \
  template <>                                                                            \
  void ApplyDense<GPUDevice, T, group_lasso::RULE>::operator()(                          \
      OpKernelContext* ctx, const group_lasso::StepConfig<group_lasso::RULE, T>& config, \
      int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,  \
      const group_lasso::HessianStore<T>& store);                                        \
  template <>                                                                            \
  Status ApplySparse<GPUDevice, T, int32_t, group_lasso::RULE>::operator()(              \
      OpKernelContext* ctx, const group_lasso::StepConfig<group_lasso::RULE, T>& config, \
      int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,  \
      const group_lasso::HessianStore<T>& store, const int32_t* ids, int64_t n);         \
  template <>                                                                            \
  Status ApplySparse<GPUDevice, T, int64_t, group_lasso::RULE>::operator()(              \
      OpKernelContext* ctx, const group_lasso::StepConfig<group_lasso::RULE, T>& config, \
      int64_t rows, int64_t dim, T* var, T* const* slots, const T* grad, const T* hess,  \
      const group_lasso::HessianStore<T>& store, const int64_t* ids, int64_t n);
#define GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(RULE) \
  GL_DECLARE_GPU_FUNCTORS(RULE, float)          \
  GL_DECLARE_GPU_FUNCTORS(RULE, double)
GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(AdamRule)
GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(AMSGradRule)
GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(AdaHessianRule)
GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(AdagradRule)
GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(MomentumRule)
GL_DECLARE_GPU_FUNCTORS_ALL_TYPES(FtrlRule)
#undef GL_DECLARE_GPU_FUNCTORS_ALL_TYPES
#undef GL_DECLARE_GPU_FUNCTORS
#endif  // GOOGLE_CUDA

}  // namespace functor

// Input layout of every op: the variable, Rule::kNumSlots slots (linear
// last), with kStored the stored Hessian estimate, lr, l1, l21, l2,
// Rule::kNumHyper rule hyperparameters, grad, for rules with kUsesHessian
// the Hessian-diagonal estimate `hessian` (the shape of grad), with kStored
// the boolean scalar `estimate`, and for the sparse ops indices.
template <typename Device, typename T, typename Tindex, typename Rule,
          bool kSparse, bool kStored = false>
class GroupLassoApplyOp : public OpKernel {
 public:
  static_assert(!kStored || Rule::kUsesHessian, "a stored estimate needs a Hessian rule");
  static constexpr int kNumVars = 1 + Rule::kNumSlots + (kStored ? 1 : 0);
  static constexpr int kNumScalars = 4 + Rule::kNumHyper;
  static constexpr int kGradInput = kNumVars + kNumScalars;
  static constexpr int kHessianInput = kGradInput + 1;  // if kUsesHessian
  static constexpr int kEstimateInput = kHessianInput + 1;  // if kStored
  static constexpr int kIndicesInput =
      kGradInput + (Rule::kUsesHessian ? 2 : 1) + (kStored ? 1 : 0);

  explicit GroupLassoApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_locking", &use_locking_));
    if (ctx->HasAttr("use_nesterov")) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr("use_nesterov", &use_nesterov_));
    }
  }

  void Compute(OpKernelContext* ctx) override {
    LockedVariables vars;
    OP_REQUIRES_OK(ctx, vars.Acquire(ctx, 0, kNumVars, use_locking_));
    OP_REQUIRES_OK(ctx, ValidateVariables(ctx, &vars));

    T scalars[kNumScalars];
    OP_REQUIRES_OK(ctx, ReadScalars(ctx, scalars));
    const std::string bad_hyper = group_lasso::CheckHyper<Rule, T>(
        scalars[0], scalars[1], scalars[2], scalars[3], scalars + 4);
    OP_REQUIRES(ctx, bad_hyper.empty(), errors::InvalidArgument(bad_hyper));

    const TensorShape& var_shape = vars.tensor(0)->shape();
    const Tensor& grad = ctx->input(kGradInput);
    OP_REQUIRES_OK(ctx, ValidateGradient(ctx, var_shape, grad));
    const T* hess = nullptr;
    if (Rule::kUsesHessian) {
      const Tensor& hessian = ctx->input(kHessianInput);
      OP_REQUIRES(ctx, hessian.shape() == grad.shape(),
                  errors::InvalidArgument(
                      "hessian must have the shape of grad ",
                      grad.shape().DebugString(), ", got ",
                      hessian.shape().DebugString()));
      hess = hessian.template flat<T>().data();
    }
    group_lasso::HessianStore<T> store;
    if (kStored) {
      const Tensor& estimate = ctx->input(kEstimateInput);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(estimate.shape()),
                  errors::InvalidArgument("estimate must be a scalar, got shape ",
                                          estimate.shape().DebugString()));
      store.estimate = estimate.scalar<bool>()();
    }

    // Rows are slices along axis 0; a scalar is one row of one element.
    const int64_t rows = var_shape.dims() == 0 ? 1 : var_shape.dim_size(0);
    const int64_t dim = rows == 0 ? 0 : var_shape.num_elements() / rows;
    const int64_t n = kSparse ? ctx->input(kIndicesInput).NumElements() : rows;
    if (rows == 0 || dim == 0 || n == 0) return;  // nothing to update

    for (int i = 0; i < kNumVars; ++i) {
      OP_REQUIRES_OK(ctx, vars.template CopyOnWrite<Device>(ctx, i));
    }
    T* var = vars.tensor(0)->template flat<T>().data();
    T* slots[Rule::kNumSlots];
    for (int k = 0; k < Rule::kNumSlots; ++k) {
      slots[k] = vars.tensor(k + 1)->template flat<T>().data();
    }
    if (kStored) {
      store.rows = vars.tensor(kNumVars - 1)->template flat<T>().data();
    }
    const auto config = group_lasso::MakeStepConfig<Rule, T>(
        scalars[0], scalars[1], scalars[2], scalars[3], scalars + 4,
        use_nesterov_, dim);
    const T* g = grad.template flat<T>().data();
    if (kSparse) {
      const Tensor& indices = ctx->input(kIndicesInput);
      OP_REQUIRES_OK(ctx, (functor::ApplySparse<Device, T, Tindex, Rule>()(
                              ctx, config, rows, dim, var, slots, g, hess,
                              store, indices.template flat<Tindex>().data(), n)));
    } else {
      functor::ApplyDense<Device, T, Rule>()(ctx, config, rows, dim, var,
                                             slots, g, hess, store);
    }
  }

 private:
  Status ValidateVariables(OpKernelContext* ctx, LockedVariables* vars) {
    for (int i = 0; i < kNumVars; ++i) {
      const Tensor* t = vars->tensor(i);
      const std::string name = requested_input(i);
      if (!t->IsInitialized()) {
        return errors::FailedPrecondition(
            "Attempting to use uninitialized variable: ", name);
      }
      if (t->dtype() != DataTypeToEnum<T>::v()) {
        return errors::InvalidArgument(
            name, " has dtype ", DataTypeString(t->dtype()),
            " but the op was called with T=",
            DataTypeString(DataTypeToEnum<T>::v()));
      }
      if (i > 0 && t->shape() != vars->tensor(0)->shape()) {
        return errors::InvalidArgument(
            name, " must have the shape of var ",
            vars->tensor(0)->shape().DebugString(), ", got ",
            t->shape().DebugString());
      }
    }
    return ::tensorflow::OkStatus();
  }

  Status ReadScalars(OpKernelContext* ctx, T* scalars) {
    for (int k = 0; k < kNumScalars; ++k) {
      const Tensor& h = ctx->input(kNumVars + k);
      if (!TensorShapeUtils::IsScalar(h.shape())) {
        return errors::InvalidArgument(requested_input(kNumVars + k),
                                       " must be a scalar, got shape ",
                                       h.shape().DebugString());
      }
      scalars[k] = h.scalar<T>()();
    }
    return ::tensorflow::OkStatus();
  }

  Status ValidateGradient(OpKernelContext* ctx, const TensorShape& var_shape,
                          const Tensor& grad) {
    if (!kSparse) {
      if (grad.shape() != var_shape) {
        return errors::InvalidArgument(
            "grad must have the shape of var ", var_shape.DebugString(),
            ", got ", grad.shape().DebugString());
      }
      return ::tensorflow::OkStatus();
    }
    const Tensor& indices = ctx->input(kIndicesInput);
    if (!TensorShapeUtils::IsVector(indices.shape())) {
      return errors::InvalidArgument("indices must be a vector, got shape ",
                                     indices.shape().DebugString());
    }
    if (var_shape.dims() < 1) {
      return errors::InvalidArgument(
          "var must have rank >= 1 for a sparse update, got shape ",
          var_shape.DebugString());
    }
    TensorShape expected = var_shape;
    expected.set_dim(0, indices.dim_size(0));
    if (grad.shape() != expected) {
      return errors::InvalidArgument(
          "grad must have shape [len(indices)] + var.shape[1:] = ",
          expected.DebugString(), ", got ", grad.shape().DebugString());
    }
    return ::tensorflow::OkStatus();
  }

  bool use_locking_ = false;
  bool use_nesterov_ = false;
};

#define GL_REGISTER_CPU(OP, RULE, T)                                        \
  REGISTER_KERNEL_BUILDER(                                                  \
      Name("ResourceApply" OP).Device(::tensorflow::DEVICE_CPU)             \
          .TypeConstraint<T>("T"),                                          \
      GroupLassoApplyOp<CPUDevice, T, int32_t, group_lasso::RULE, false>);  \
  REGISTER_KERNEL_BUILDER(                                                  \
      Name("ResourceSparseApply" OP).Device(::tensorflow::DEVICE_CPU)       \
          .TypeConstraint<T>("T")                                           \
          .TypeConstraint<int32_t>("Tindices"),                             \
      GroupLassoApplyOp<CPUDevice, T, int32_t, group_lasso::RULE, true>);   \
  REGISTER_KERNEL_BUILDER(                                                  \
      Name("ResourceSparseApply" OP).Device(::tensorflow::DEVICE_CPU)       \
          .TypeConstraint<T>("T")                                           \
          .TypeConstraint<int64_t>("Tindices"),                             \
      GroupLassoApplyOp<CPUDevice, T, int64_t, group_lasso::RULE, true>);

#define GL_REGISTER_CPU_ALL_TYPES(OP, RULE) \
  GL_REGISTER_CPU(OP, RULE, float)          \
  GL_REGISTER_CPU(OP, RULE, double)

GL_REGISTER_CPU_ALL_TYPES("GroupAdam", AdamRule)
GL_REGISTER_CPU_ALL_TYPES("GroupAMSGrad", AMSGradRule)
GL_REGISTER_CPU_ALL_TYPES("GroupAdaHessian", AdaHessianRule)

// AdaHessian with a stored estimate (update_every > 1).
#define GL_REGISTER_CPU_STORED(T)                                                  \
  REGISTER_KERNEL_BUILDER(                                                        \
      Name("ResourceApplyGroupAdaHessianStored").Device(::tensorflow::DEVICE_CPU) \
          .TypeConstraint<T>("T"),                                                \
      GroupLassoApplyOp<CPUDevice, T, int32_t, group_lasso::AdaHessianRule,       \
                        false, true>);                                            \
  REGISTER_KERNEL_BUILDER(                                                        \
      Name("ResourceSparseApplyGroupAdaHessianStored")                            \
          .Device(::tensorflow::DEVICE_CPU)                                       \
          .TypeConstraint<T>("T")                                                 \
          .TypeConstraint<int32_t>("Tindices"),                                   \
      GroupLassoApplyOp<CPUDevice, T, int32_t, group_lasso::AdaHessianRule,       \
                        true, true>);                                             \
  REGISTER_KERNEL_BUILDER(                                                        \
      Name("ResourceSparseApplyGroupAdaHessianStored")                            \
          .Device(::tensorflow::DEVICE_CPU)                                       \
          .TypeConstraint<T>("T")                                                 \
          .TypeConstraint<int64_t>("Tindices"),                                   \
      GroupLassoApplyOp<CPUDevice, T, int64_t, group_lasso::AdaHessianRule,       \
                        true, true>);
GL_REGISTER_CPU_STORED(float)
GL_REGISTER_CPU_STORED(double)
#undef GL_REGISTER_CPU_STORED

#if GOOGLE_CUDA
// GPU: like TensorFlow's own training ops, the resource handles and the
// scalar hyperparameters live in host memory (the kernel validates the
// scalars on the host before launching anything); grad, hessian and indices
// are on the device.
#define GL_HOST(NAME) .HostMemory(NAME)
#define GL_COMMON_HOST GL_HOST("var") GL_HOST("linear") GL_HOST("lr") GL_HOST("l1") \
  GL_HOST("l21") GL_HOST("l2")
#define GL_ADAM_HOST GL_HOST("m") GL_HOST("v") GL_HOST("beta1_power") GL_HOST("beta2_power") \
  GL_HOST("beta1") GL_HOST("beta2") GL_HOST("epsilon")
#define GL_REGISTER_GPU_OP(OP, HOST, RULE, T, STORED)                                        \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("ResourceApply" OP).Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T")       \
          GL_COMMON_HOST HOST,                                                              \
      GroupLassoApplyOp<GPUDevice, T, int32_t, group_lasso::RULE, false, STORED>);          \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("ResourceSparseApply" OP).Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T") \
          .TypeConstraint<int32_t>("Tindices") GL_COMMON_HOST HOST,                         \
      GroupLassoApplyOp<GPUDevice, T, int32_t, group_lasso::RULE, true, STORED>);           \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("ResourceSparseApply" OP).Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T") \
          .TypeConstraint<int64_t>("Tindices") GL_COMMON_HOST HOST,                         \
      GroupLassoApplyOp<GPUDevice, T, int64_t, group_lasso::RULE, true, STORED>);
#define GL_REGISTER_GPU(T)                                                                   \
  GL_REGISTER_GPU_OP("GroupAdam", GL_ADAM_HOST, AdamRule, T, false)                          \
  GL_REGISTER_GPU_OP("GroupAMSGrad", GL_ADAM_HOST GL_HOST("vhat"), AMSGradRule, T, false)    \
  GL_REGISTER_GPU_OP("GroupAdaHessian", GL_ADAM_HOST GL_HOST("hessian_power"),               \
                     AdaHessianRule, T, false)                                               \
  GL_REGISTER_GPU_OP("GroupAdaHessianStored",                                                \
                     GL_ADAM_HOST GL_HOST("hessian_power") GL_HOST("hessian_estimate")       \
                         GL_HOST("estimate"),                                                \
                     AdaHessianRule, T, true)                                                \
  GL_REGISTER_GPU_OP("GroupAdagrad", GL_HOST("accumulator") GL_HOST("epsilon"), AdagradRule, \
                     T, false)                                                               \
  GL_REGISTER_GPU_OP("GroupMomentum", GL_HOST("momentum_slot") GL_HOST("momentum"),          \
                     MomentumRule, T, false)                                                 \
  GL_REGISTER_GPU_OP("GroupFtrl", GL_HOST("accumulator") GL_HOST("l2_shrinkage")             \
                         GL_HOST("beta") GL_HOST("lr_power"),                                \
                     FtrlRule, T, false)
GL_REGISTER_GPU(float)
GL_REGISTER_GPU(double)
#undef GL_REGISTER_GPU
#undef GL_REGISTER_GPU_OP
#undef GL_ADAM_HOST
#undef GL_COMMON_HOST
#undef GL_HOST
#endif  // GOOGLE_CUDA
GL_REGISTER_CPU_ALL_TYPES("GroupAdagrad", AdagradRule)
GL_REGISTER_CPU_ALL_TYPES("GroupMomentum", MomentumRule)
GL_REGISTER_CPU_ALL_TYPES("GroupFtrl", FtrlRule)

#undef GL_REGISTER_CPU_ALL_TYPES
#undef GL_REGISTER_CPU

}  // namespace group_lasso_tf
