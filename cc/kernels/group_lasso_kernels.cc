// OpKernels of the group-lasso training ops (see cc/ops/) and their CPU
// functors.
//
// One kernel class serves every optimizer: the moment rule (rules.h) is a
// template parameter, so input layout, validation, locking and copy-on-write
// are written once, and the kernels of every rule of the table
// (GROUP_LASSO_RULES) are registered, CPU and GPU, by one loop at the end.
// Order of work in Compute: look up and lock the variables, validate every
// input, copy-on-write, then update. Nothing is written before all checks
// have passed.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "group_lasso/apply.h"
#include "group_lasso/checks.h"
#if GOOGLE_CUDA
#include "group_lasso/gpu_block.h"
#include "tensorflow/core/common_runtime/gpu/gpu_event_mgr.h"
#endif
#include "kernels/group_lasso_functors.h"
#include "kernels/variable_access.h"
#include "ops/group_lasso_ops.h"
#include "tensorflow/core/framework/kernel_def_builder.h"
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
  int64_t parallelism() const {
    return ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
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
    group_lasso::ApplySparseIds(config, dim, var, slots, grad, hess, ids, n, IntraOpFor{ctx},
                                store);
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
GROUP_LASSO_RULES(GL_DECLARE_GPU_FUNCTORS_ALL_TYPES)
#undef GL_DECLARE_GPU_FUNCTORS_ALL_TYPES
#undef GL_DECLARE_GPU_FUNCTORS
#endif  // GOOGLE_CUDA

}  // namespace functor

// The kernel of every op of the table; its input positions come from the
// layout the op was registered with (OpLayout in rules.h).
template <typename Device, typename T, typename Tindex, typename Rule,
          bool kSparse, bool kStored = false>
class GroupLassoApplyOp : public OpKernel {
 public:
  using Layout = group_lasso::OpLayout<Rule, kSparse, kStored>;
  static constexpr int kNumVars = Layout::kNumVars;
  static constexpr int kNumScalars = Layout::kNumScalars;
  static constexpr int kGradInput = Layout::kGradInput;
  static constexpr int kHessianInput = Layout::kHessianInput;
  static constexpr int kEstimateInput = Layout::kEstimateInput;
  static constexpr int kIndicesInput = Layout::kIndicesInput;

  explicit GroupLassoApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES(ctx, ctx->num_inputs() == Layout::kNumInputs,
                errors::Internal(def().op(), " has ", ctx->num_inputs(),
                                 " inputs; its kernel expects ", Layout::kNumInputs));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_locking", &use_locking_));
    if constexpr (Rule::kFlag != nullptr) {  // constexpr: no GetAttr(nullptr) to compile
      OP_REQUIRES_OK(ctx, ctx->GetAttr(Rule::kFlag, &flag_));
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
        flag_, dim);
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
  bool flag_ = false;  // the value of the op attribute Rule::kFlag
};

// The inputs of a multi-table sparse step (ResourceSparseApply<kOpName>Multi):
// N tables' variables and slots looked up and locked together, and every
// input of every table checked, errors naming the table, before anything is
// written. Shared by the CPU and the GPU kernels.
template <typename T, typename Tindex, typename Rule>
class MultiTableInputs {
 public:
  static constexpr int kNumSlots = Rule::kNumSlots;
  static constexpr int kNumHyper = Rule::kNumHyper;

  // A table with ids to apply.
  struct Table {
    int input;  // its position t in the op's lists
    int64_t rows;
    int64_t dim;
    int64_t count;  // ids in its batch
    const Tindex* ids;
    const T* grad;
    group_lasso::StepConfig<Rule, T> config;
  };

  // `names`: the op's table_names attribute. `check_ids`: range-check the ids
  // here, on the host (the GPU kernel checks them on the device).
  Status Prepare(OpKernelContext* ctx, int n, bool use_locking, bool flag,
                 const std::vector<std::string>& names, bool check_ids) {
    n_ = n;
    const int slots_input = n;  // one [kNumSlots, n] tensor of handles
    const int lr_input = slots_input + 1;
    const int strengths_input = lr_input + 1;  // l1[t], then l21[t] at +n, l2[t] at +2n
    const int hyper_input = strengths_input + 3 * n;
    const int grad_input = hyper_input + kNumHyper;
    const int indices_input = grad_input + n;
    const Tensor& slot_handles = ctx->input(slots_input);
    if (slot_handles.dtype() != ::tensorflow::DT_RESOURCE ||
        slot_handles.shape() != TensorShape({kNumSlots, n})) {
      return errors::InvalidArgument("slots must be a [", kNumSlots, ", N = ", n,
                                     "] tensor of resource handles (slot k of table t at "
                                     "[k, t]), got shape ", slot_handles.shape().DebugString());
    }
    // var[t] at VarIndex(t, 0), slot k - 1 of table t at VarIndex(t, k).
    std::vector<const ::tensorflow::ResourceHandle*> handles;
    for (int t = 0; t < n; ++t) handles.push_back(&::tensorflow::HandleFromInput(ctx, t));
    const auto slot_flat = slot_handles.flat<::tensorflow::ResourceHandle>();
    for (int i = 0; i < kNumSlots * n; ++i) handles.push_back(&slot_flat(i));
    TF_RETURN_IF_ERROR(vars_.Acquire(ctx, handles, use_locking, [&](int i) {
      return i < n ? "var[" + std::to_string(i) + "] (" + TableName(names, i) + ")"
                   : std::string("slot ") + Rule::kSlotNames[i / n - 1] + " of " +
                         TableName(names, i % n);
    }));
    const int num_vars = n * (1 + kNumSlots);
    std::vector<const void*> seen;
    for (int i = 0; i < num_vars; ++i) seen.push_back(vars_.var(i));
    std::sort(seen.begin(), seen.end());
    if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) {
      return errors::InvalidArgument("a variable is passed twice (as two tables, or as a "
                                     "table and a slot): each table must be its own");
    }
    T lr;
    T hyper[kNumHyper + 1];
    TF_RETURN_IF_ERROR(ReadScalar(ctx, lr_input, &lr));
    for (int k = 0; k < kNumHyper; ++k) {
      TF_RETURN_IF_ERROR(ReadScalar(ctx, hyper_input + k, hyper + k));
    }
    for (int t = 0; t < n; ++t) {
      const std::string table = TableName(names, t) + ": ";
      const Tensor* var = vars_.tensor(VarIndex(t, 0));
      for (int k = 0; k <= kNumSlots; ++k) {
        const Tensor* v = vars_.tensor(VarIndex(t, k));
        const std::string name = k == 0 ? std::string("var") : Rule::kSlotNames[k - 1];
        if (!v->IsInitialized()) {
          return errors::FailedPrecondition(table, "uninitialized variable ", name);
        }
        if (v->dtype() != DataTypeToEnum<T>::v()) {
          return errors::InvalidArgument(table, name, " has dtype ", DataTypeString(v->dtype()),
                                         " but the op was called with T=",
                                         DataTypeString(DataTypeToEnum<T>::v()));
        }
        if (v->shape() != var->shape()) {
          return errors::InvalidArgument(table, name, " must have the shape of var ",
                                         var->shape().DebugString(), ", got ",
                                         v->shape().DebugString());
        }
      }
      T l1, l21, l2;
      TF_RETURN_IF_ERROR(ReadScalar(ctx, strengths_input + t, &l1));
      TF_RETURN_IF_ERROR(ReadScalar(ctx, strengths_input + n + t, &l21));
      TF_RETURN_IF_ERROR(ReadScalar(ctx, strengths_input + 2 * n + t, &l2));
      const std::string bad = group_lasso::CheckHyper<Rule, T>(lr, l1, l21, l2, hyper);
      if (!bad.empty()) return errors::InvalidArgument(table, bad);
      const TensorShape& shape = var->shape();
      if (shape.dims() < 1) {
        return errors::InvalidArgument(table, "var must have rank >= 1 for a sparse update, "
                                       "got shape ", shape.DebugString());
      }
      const Tensor& indices = ctx->input(indices_input + t);
      const Tensor& grad = ctx->input(grad_input + t);
      if (!TensorShapeUtils::IsVector(indices.shape())) {
        return errors::InvalidArgument(table, "indices must be a vector, got shape ",
                                       indices.shape().DebugString());
      }
      TensorShape expected = shape;
      expected.set_dim(0, indices.dim_size(0));
      if (grad.shape() != expected) {
        return errors::InvalidArgument(table, "grad must have shape [len(indices)] + "
                                       "var.shape[1:] = ", expected.DebugString(), ", got ",
                                       grad.shape().DebugString());
      }
      const int64_t rows = shape.dim_size(0);
      const int64_t dim = rows == 0 ? 0 : shape.num_elements() / rows;
      const int64_t count = indices.NumElements();
      const Tindex* ids = indices.template flat<Tindex>().data();
      if (check_ids) {
        const int64_t bad_position = group_lasso::FirstOutOfRange(ids, count, rows);
        if (bad_position >= 0) {
          return OutOfRange(names, t, bad_position, static_cast<int64_t>(ids[bad_position]),
                            rows);
        }
      }
      // Nothing to update; on the GPU a table with no rows still has its
      // ids checked (every one is out of range).
      if (count == 0 || (check_ids && (rows == 0 || dim == 0))) continue;
      tables_.push_back({t, rows, dim, count, ids, grad.template flat<T>().data(),
                         group_lasso::MakeStepConfig<Rule, T>(lr, l1, l21, l2, hyper, flag,
                                                              dim)});
    }
    return ::tensorflow::OkStatus();
  }

  // The error of an id outside [0, rows) at position `position` of table t.
  static Status OutOfRange(const std::vector<std::string>& names, int t, int64_t position,
                           int64_t id, int64_t rows) {
    return errors::InvalidArgument(TableName(names, t), ": indices[", position, "] = ", id,
                                   " is not in [0, ", rows, "): the variable has ", rows,
                                   " rows");
  }

  static std::string TableName(const std::vector<std::string>& names, int t) {
    return t < static_cast<int>(names.size()) ? "table " + names[t]
                                               : "table " + std::to_string(t);
  }

  const std::vector<Table>& tables() const { return tables_; }

  // Gives the variables of `table` buffers of their own (copy-on-write) and
  // returns their data: var, then the slots.
  template <typename Device>
  Status Writable(OpKernelContext* ctx, const Table& table, T** var, T** slots) {
    for (int k = 0; k <= kNumSlots; ++k) {
      TF_RETURN_IF_ERROR(vars_.template CopyOnWrite<Device>(ctx, VarIndex(table.input, k)));
    }
    *var = vars_.tensor(VarIndex(table.input, 0))->template flat<T>().data();
    for (int k = 0; k < kNumSlots; ++k) {
      slots[k] = vars_.tensor(VarIndex(table.input, k + 1))->template flat<T>().data();
    }
    return ::tensorflow::OkStatus();
  }

 private:
  // The variable of table t: its var (k = 0) or slot k - 1.
  int VarIndex(int t, int k) const { return k * n_ + t; }

  Status ReadScalar(OpKernelContext* ctx, int input, T* out) {
    const Tensor& h = ctx->input(input);
    if (!TensorShapeUtils::IsScalar(h.shape())) {
      return errors::InvalidArgument(ctx->op_kernel().requested_input(input),
                                     " must be a scalar, got shape ", h.shape().DebugString());
    }
    *out = h.scalar<T>()();
    return ::tensorflow::OkStatus();
  }

  int n_ = 0;
  LockedVariables vars_;
  std::vector<Table> tables_;
};

// The attributes of a multi-table op, read once.
struct MultiTableAttrs {
  int n = 0;
  bool use_locking = false;
  bool flag = false;  // the value of the op attribute Rule::kFlag
  std::vector<std::string> table_names;

  template <typename Rule>
  Status Read(OpKernelConstruction* ctx) {
    TF_RETURN_IF_ERROR(ctx->GetAttr("N", &n));
    TF_RETURN_IF_ERROR(ctx->GetAttr("use_locking", &use_locking));
    TF_RETURN_IF_ERROR(ctx->GetAttr("table_names", &table_names));
    if constexpr (Rule::kFlag != nullptr) {  // constexpr: no GetAttr(nullptr) to compile
      TF_RETURN_IF_ERROR(ctx->GetAttr(Rule::kFlag, &flag));
    }
    const int expected = n + 1 + 1 + 3 * n + Rule::kNumHyper + 2 * n;
    if (ctx->num_inputs() != expected) {
      return errors::Internal(ctx->def().op(), " has ", ctx->num_inputs(),
                              " inputs; its kernel expects ", expected);
    }
    return ::tensorflow::OkStatus();
  }
};

// The multi-table sparse step on the CPU: the inputs checked, then one
// ApplySparseTables pass over the rows of all tables.
template <typename T, typename Tindex, typename Rule>
class GroupLassoMultiApplyOp : public OpKernel {
 public:
  explicit GroupLassoMultiApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read<Rule>(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    MultiTableInputs<T, Tindex, Rule> inputs;
    OP_REQUIRES_OK(ctx, inputs.Prepare(ctx, attrs_.n, attrs_.use_locking, attrs_.flag,
                                       attrs_.table_names, /*check_ids=*/true));
    // Everything is checked: from here on, writes.
    std::vector<group_lasso::SparseTable<Rule, T, Tindex>> tables(inputs.tables().size());
    for (size_t j = 0; j < tables.size(); ++j) {
      const auto& in = inputs.tables()[j];
      OP_REQUIRES_OK(ctx, inputs.template Writable<CPUDevice>(ctx, in, &tables[j].var,
                                                              tables[j].slots));
      tables[j].config = in.config;
      tables[j].d = in.dim;
    }
    // Each table's duplicates summed on the intra-op threads, then one pass
    // over the rows of all.
    const int64_t num_tables = static_cast<int64_t>(tables.size());
    functor::IntraOpFor{ctx}(num_tables, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const auto& in = inputs.tables()[j];
        group_lasso::SumDuplicateRows(in.ids, in.count, in.grad, static_cast<const T*>(nullptr),
                                      in.dim, &tables[j].rows);
      }
    });
    group_lasso::ApplySparseTables(tables, functor::IntraOpFor{ctx});
  }

 private:
  MultiTableAttrs attrs_;
};

#if GOOGLE_CUDA
// The multi-table sparse step on the GPU, with no host synchronization: the
// tables' descriptors go to the device in one transfer from pinned memory,
// the step is queued (gpu::LaunchSparseTables: a fixed number of launches
// whatever the number of tables, ids range-checked on the device), and the
// check it leaves is copied back and read by TensorFlow's event manager once
// the stream has done the work; only then is the op done, failing the step
// (with nothing written) if an id was out of range.
template <typename T, typename Tindex, typename Rule>
class GroupLassoMultiApplyGpuOp : public ::tensorflow::AsyncOpKernel {
 public:
  using Block = group_lasso::gpu::TablesBlock<Rule, T, Tindex>;

  explicit GroupLassoMultiApplyGpuOp(OpKernelConstruction* ctx) : AsyncOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read<Rule>(ctx));
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    MultiTableInputs<T, Tindex, Rule> inputs;
    OP_REQUIRES_OK_ASYNC(ctx, inputs.Prepare(ctx, attrs_.n, attrs_.use_locking, attrs_.flag,
                                              attrs_.table_names, /*check_ids=*/false),
                         done);
    const int num_tables = static_cast<int>(inputs.tables().size());
    if (num_tables == 0) {
      done();
      return;
    }
    std::vector<group_lasso::gpu::DeviceTable<Rule, T, Tindex>> tables(num_tables);
    int64_t max_rows = 1;
    for (int j = 0; j < num_tables; ++j) {
      const auto& in = inputs.tables()[j];
      auto& table = tables[j];
      OP_REQUIRES_OK_ASYNC(ctx, inputs.template Writable<GPUDevice>(ctx, in, &table.var,
                                                                     table.slots),
                           done);
      table.config = in.config;
      table.d = in.dim;
      table.num_rows = in.rows;
      table.grad = in.grad;
      table.ids = in.ids;
      table.n = in.count;
      max_rows = std::max(max_rows, in.rows);
    }
    const int64_t bytes = static_cast<int64_t>(Block::Bytes(num_tables));
    ::tensorflow::AllocatorAttributes pinned;
    pinned.set_on_host(true);
    pinned.set_gpu_compatible(true);
    Tensor host_block, device_block;
    OP_REQUIRES_OK_ASYNC(ctx, ctx->allocate_temp(::tensorflow::DT_INT8, TensorShape({bytes}),
                                                 &host_block, pinned),
                         done);
    OP_REQUIRES_OK_ASYNC(ctx, ctx->allocate_temp(::tensorflow::DT_INT8, TensorShape({bytes}),
                                                 &device_block),
                         done);
    void* host = host_block.flat<int8_t>().data();
    const int64_t total = Block::Fill(host, tables.data(), num_tables);
    OP_REQUIRES_OK_ASYNC(
        ctx, (functor::ApplySparseTablesGpu<T, Tindex, Rule>()(
                 ctx, host, device_block.flat<int8_t>().data(), num_tables, total, max_rows)),
        done);
    // Read the check when the stream gets there (the host block, the
    // check's destination, stays alive in the callback). The variables are
    // unlocked when ComputeAsync returns, as by TensorFlow's own GPU training
    // ops: the stream orders the update before any later use of them.
    std::vector<std::pair<int, int64_t>> input_and_rows;  // of each table
    for (const auto& in : inputs.tables()) input_and_rows.emplace_back(in.input, in.rows);
    auto read_check = [ctx, host_block, input_and_rows, names = attrs_.table_names, done]() {
      void* block = const_cast<int8_t*>(host_block.flat<int8_t>().data());
      const group_lasso::gpu::SparseCheck check = *Block::Check(block);
      if (check.bad_position != group_lasso::gpu::kNoBadPosition) {
        const int64_t position = static_cast<int64_t>(check.bad_position);
        const int64_t* firsts = Block::Firsts(block);
        size_t j = 0;
        while (j + 1 < input_and_rows.size() && firsts[j + 1] <= position) ++j;
        ctx->SetStatus(MultiTableInputs<T, Tindex, Rule>::OutOfRange(
            names, input_and_rows[j].first, position - firsts[j],
            static_cast<int64_t>(check.bad_id), input_and_rows[j].second));
      }
      done();
    };
    ctx->device()->tensorflow_accelerator_device_info()->event_mgr->ThenExecute(
        ctx->op_device_context()->stream(), std::move(read_check));
  }

 private:
  MultiTableAttrs attrs_;
};
#endif  // GOOGLE_CUDA

// ---------------------------------------------------------- registration
template <typename Device, typename T, typename Tindex, typename Rule, bool kSparse,
          bool kStored>
OpKernel* CreateApplyOp(OpKernelConstruction* ctx) {
  return new GroupLassoApplyOp<Device, T, Tindex, Rule, kSparse, kStored>(ctx);
}

// On the GPU, like TensorFlow's own training ops, the resource handles and
// the scalar inputs live in host memory (the kernel validates the scalars on
// the host before launching anything); grad, hessian and indices are on the
// device.
// (The multi-table op has its slots stacked in one input, `slots`.)
template <typename Rule, bool kSparse, bool kStored, bool kStackedSlots = false>
std::vector<std::string> HostMemoryInputs() {
  std::vector<std::string> names = {"var", "lr", "l1", "l21", "l2"};
  if (kStackedSlots) {
    names.push_back("slots");
  } else {
    for (const char* slot : Rule::kSlotNames) names.push_back(slot);
  }
  for (int k = 0; k < Rule::kNumHyper; ++k) names.push_back(Rule::kHyper[k].name);
  if (kStored) {
    names.push_back("hessian_estimate");
    names.push_back("estimate");
  }
  return names;
}

template <typename Device, typename T, typename Tindex, typename Rule, bool kSparse,
          bool kStored>
void RegisterKernel(const char* device, bool host_scalars) {
  const std::string op = ApplyOpName(Rule::kOpName, kSparse, kStored);
  ::tensorflow::KernelDefBuilder builder(op.c_str());
  builder.Device(device).TypeConstraint<T>("T");
  if (kSparse) builder.TypeConstraint<Tindex>("Tindices");
  const std::vector<std::string> host = HostMemoryInputs<Rule, kSparse, kStored>();
  if (host_scalars) {
    for (const std::string& name : host) builder.HostMemory(name.c_str());
  }
  // The registrar takes the KernelDef and files it in TensorFlow's registry.
  ::tensorflow::kernel_factory::OpKernelRegistrar(
      builder.Build(), "GroupLassoApplyOp",
      &CreateApplyOp<Device, T, Tindex, Rule, kSparse, kStored>);
}

template <typename Device, typename T, typename Rule, bool kStored>
void RegisterKernels(const char* device, bool host_scalars) {
  RegisterKernel<Device, T, int32_t, Rule, false, kStored>(device, host_scalars);
  RegisterKernel<Device, T, int32_t, Rule, true, kStored>(device, host_scalars);
  RegisterKernel<Device, T, int64_t, Rule, true, kStored>(device, host_scalars);
}

template <typename T, typename Tindex, typename Rule>
OpKernel* CreateMultiApplyOp(OpKernelConstruction* ctx) {
  return new GroupLassoMultiApplyOp<T, Tindex, Rule>(ctx);
}

#if GOOGLE_CUDA
template <typename T, typename Tindex, typename Rule>
OpKernel* CreateMultiApplyGpuOp(OpKernelConstruction* ctx) {
  return new GroupLassoMultiApplyGpuOp<T, Tindex, Rule>(ctx);
}
#endif

// The multi-table op's kernels, CPU and (GOOGLE_CUDA builds) GPU; on the GPU
// the resources and the scalars are in host memory, as for the one-table ops.
template <typename Rule>
void RegisterMultiKernels() {
  if constexpr (!Rule::kUsesHessian) {
    const std::string op = MultiApplyOpName(Rule::kOpName);
    auto add = [&op](bool gpu, auto* create, ::tensorflow::DataType t,
                     ::tensorflow::DataType index) {
      ::tensorflow::KernelDefBuilder builder(op.c_str());
      builder.Device(gpu ? ::tensorflow::DEVICE_GPU : ::tensorflow::DEVICE_CPU)
          .TypeConstraint("T", t)
          .TypeConstraint("Tindices", index);
      if (gpu) {
        for (const std::string& name : HostMemoryInputs<Rule, true, false, true>()) {
          builder.HostMemory(name.c_str());
        }
      }
      ::tensorflow::kernel_factory::OpKernelRegistrar(builder.Build(), "GroupLassoMultiApplyOp",
                                                      create);
    };
    using ::tensorflow::DT_DOUBLE;
    using ::tensorflow::DT_FLOAT;
    using ::tensorflow::DT_INT32;
    using ::tensorflow::DT_INT64;
    add(false, &CreateMultiApplyOp<float, int32_t, Rule>, DT_FLOAT, DT_INT32);
    add(false, &CreateMultiApplyOp<float, int64_t, Rule>, DT_FLOAT, DT_INT64);
    add(false, &CreateMultiApplyOp<double, int32_t, Rule>, DT_DOUBLE, DT_INT32);
    add(false, &CreateMultiApplyOp<double, int64_t, Rule>, DT_DOUBLE, DT_INT64);
#if GOOGLE_CUDA
    add(true, &CreateMultiApplyGpuOp<float, int32_t, Rule>, DT_FLOAT, DT_INT32);
    add(true, &CreateMultiApplyGpuOp<float, int64_t, Rule>, DT_FLOAT, DT_INT64);
    add(true, &CreateMultiApplyGpuOp<double, int32_t, Rule>, DT_DOUBLE, DT_INT32);
    add(true, &CreateMultiApplyGpuOp<double, int64_t, Rule>, DT_DOUBLE, DT_INT64);
#endif
  }
}

template <typename Device, typename Rule>
void RegisterRuleKernels(const char* device, bool host_scalars) {
  RegisterKernels<Device, float, Rule, false>(device, host_scalars);
  RegisterKernels<Device, double, Rule, false>(device, host_scalars);
  if constexpr (Rule::kUsesHessian) {
    RegisterKernels<Device, float, Rule, true>(device, host_scalars);
    RegisterKernels<Device, double, Rule, true>(device, host_scalars);
  }
}

// GroupLassoStackHandles (cc/ops/group_lasso_ops.cc): copies the handles,
// which live in host memory on every device.
class StackHandlesOp : public OpKernel {
 public:
  explicit StackHandlesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rows", &rows_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = ctx->num_inputs();
    OP_REQUIRES(ctx, n % rows_ == 0,
                errors::InvalidArgument("rows = ", rows_, " must divide N = ", n));
    Tensor* out = nullptr;
    ::tensorflow::AllocatorAttributes host;
    host.set_on_host(true);
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows_, n / rows_}), &out, host));
    auto flat = out->flat<::tensorflow::ResourceHandle>();
    for (int i = 0; i < n; ++i) {
      const Tensor& handle = ctx->input(i);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(handle.shape()),
                  errors::InvalidArgument("handles[", i, "] must be a scalar handle, got shape ",
                                          handle.shape().DebugString()));
      flat(i) = handle.scalar<::tensorflow::ResourceHandle>()();
    }
  }

 private:
  int rows_ = 1;
};

// Registered when the library is loaded, as REGISTER_KERNEL_BUILDER would.
[[maybe_unused]] static const bool kKernelsRegistered = [] {
  for (const char* device : {::tensorflow::DEVICE_CPU, ::tensorflow::DEVICE_GPU}) {
#if !GOOGLE_CUDA
    if (std::string(device) == ::tensorflow::DEVICE_GPU) continue;
#endif
    ::tensorflow::kernel_factory::OpKernelRegistrar(
        ::tensorflow::KernelDefBuilder("GroupLassoStackHandles")
            .Device(device)
            .HostMemory("handles")
            .HostMemory("stacked")
            .Build(),
        "StackHandlesOp", [](OpKernelConstruction* ctx) -> OpKernel* {
          return new StackHandlesOp(ctx);
        });
  }
#define GL_REGISTER_KERNELS(RULE)                                               \
  RegisterRuleKernels<CPUDevice, group_lasso::RULE>(::tensorflow::DEVICE_CPU, false); \
  RegisterMultiKernels<group_lasso::RULE>();
  GROUP_LASSO_RULES(GL_REGISTER_KERNELS)
#undef GL_REGISTER_KERNELS
#if GOOGLE_CUDA
#define GL_REGISTER_GPU_KERNELS(RULE) \
  RegisterRuleKernels<GPUDevice, group_lasso::RULE>(::tensorflow::DEVICE_GPU, true);
  GROUP_LASSO_RULES(GL_REGISTER_GPU_KERNELS)
#undef GL_REGISTER_GPU_KERNELS
#endif  // GOOGLE_CUDA
  return true;
}();

}  // namespace group_lasso_tf
