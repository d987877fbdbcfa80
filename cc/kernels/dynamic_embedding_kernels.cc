// CPU kernels of the dynamic embedding index ops (cc/ops/dynamic_embedding_ops.cc)
// over the framework-free index of cc/group_lasso/dynamic_index.h.
//
// Order of work, as in the training ops: look up and lock every variable
// (index, pool, slots) in address order, validate every input, copy on
// write, then change the index. Lookups find known keys on several threads
// and admit new ones in id order, so a table's contents never depend on
// thread timing.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <string>
#include <vector>

#include "group_lasso/dynamic_index.h"
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
namespace errors = ::tensorflow::errors;
namespace dynamic = ::group_lasso::dynamic;
using CPUDevice = Eigen::ThreadPoolDevice;

constexpr int kNumIndexVars = 5;

static bool IsPowerOfTwo(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// Checks the five index variables (inputs 0..4 of `vars`) and views them.
// With `write`, each variable first gets a buffer of its own (copy on write).
static Status ViewIndex(OpKernelContext* ctx, LockedVariables* vars, dynamic::IndexView* view,
                        bool write = true) {
  for (int i = 0; i < kNumIndexVars; ++i) {
    const Tensor* t = vars->tensor(i);
    if (!t->IsInitialized()) {
      return errors::FailedPrecondition("uninitialized index variable ",
                                        ctx->op_kernel().requested_input(i));
    }
    if (t->dtype() != ::tensorflow::DT_INT64) {
      return errors::InvalidArgument(ctx->op_kernel().requested_input(i),
                                     " must be int64, got ", DataTypeString(t->dtype()));
    }
  }
  const Tensor& table = *vars->tensor(0);
  const Tensor& rows = *vars->tensor(1);
  const Tensor& free_rows = *vars->tensor(2);
  const Tensor& pending = *vars->tensor(3);
  const Tensor& stats = *vars->tensor(4);
  if (table.dims() != 2 || table.dim_size(1) != 2 || !IsPowerOfTwo(table.dim_size(0))) {
    return errors::InvalidArgument("key_table must have shape [2^k, 2], got ",
                                   table.shape().DebugString());
  }
  if (rows.dims() != 2 || rows.dim_size(1) != 3 || rows.dim_size(0) < 1) {
    return errors::InvalidArgument("row_state must have shape [capacity >= 1, 3], got ",
                                   rows.shape().DebugString());
  }
  const int64_t capacity = rows.dim_size(0);
  if (table.dim_size(0) < 2 * capacity) {
    return errors::InvalidArgument("key_table must have at least 2 * capacity = ",
                                   2 * capacity, " slots, got ", table.dim_size(0));
  }
  if (free_rows.shape() != TensorShape({capacity})) {
    return errors::InvalidArgument("free_rows must have shape [", capacity, "], got ",
                                   free_rows.shape().DebugString());
  }
  if (pending.dims() != 2 || pending.dim_size(1) != 2 || !IsPowerOfTwo(pending.dim_size(0))) {
    return errors::InvalidArgument("pending must have shape [2^k, 2], got ",
                                   pending.shape().DebugString());
  }
  if (stats.shape() != TensorShape({dynamic::kNumStats})) {
    return errors::InvalidArgument("stats must have shape [", dynamic::kNumStats, "], got ",
                                   stats.shape().DebugString());
  }
  for (int i = 0; write && i < kNumIndexVars; ++i) {
    TF_RETURN_IF_ERROR(vars->CopyOnWrite<CPUDevice>(ctx, i));
  }
  auto data = [&](int i) { return vars->tensor(i)->flat<int64_t>().data(); };
  *view = {data(0), table.dim_size(0), data(1), capacity, data(2),
           data(3), pending.dim_size(0), data(4)};
  return ::tensorflow::OkStatus();
}

class DynamicLookupOp : public OpKernel {
 public:
  explicit DynamicLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("min_count", &min_count_));
    std::string on_full;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("on_full", &on_full));
    on_full_ = on_full == "evict_lru" ? dynamic::OnFull::kEvictLru : dynamic::OnFull::kDrop;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("training", &training_));
  }

  void Compute(OpKernelContext* ctx) override {
    LockedVariables vars;
    OP_REQUIRES_OK(ctx, vars.Acquire(ctx, 0, kNumIndexVars, /*exclusive=*/training_));
    const Tensor& ids = ctx->input(kNumIndexVars);
    Tensor* rows = nullptr;
    Tensor* fresh = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ids.shape(), &rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ids.shape(), &fresh));
    dynamic::IndexView view;
    OP_REQUIRES_OK(ctx, ViewIndex(ctx, &vars, &view, /*write=*/training_));
    // The index's probes are random reads of arrays larger than the caches:
    // spread over the intra-op threads.
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    auto for_ranges = [threads](int64_t n, auto&& fn) {
      if (n <= 0) return;
      ::tensorflow::Shard(threads->num_threads, threads->workers, n, /*cost_per_unit=*/200,
                          [&fn](int64_t begin, int64_t end) { fn(begin, end); });
    };
    if (!training_) {
      dynamic::Find(view, ids.flat<int64_t>().data(), ids.NumElements(),
                    rows->flat<int64_t>().data(), fresh->flat<bool>().data(), for_ranges);
      return;
    }
    dynamic::Lookup(view, ids.flat<int64_t>().data(), ids.NumElements(), min_count_, on_full_,
                    rows->flat<int64_t>().data(), fresh->flat<bool>().data(), for_ranges);
  }

 private:
  int64_t min_count_ = 1;
  dynamic::OnFull on_full_ = dynamic::OnFull::kDrop;
  bool training_ = true;
};

// ClearStale (kRelease false) and Release (true): inputs are the index, for
// Release the pool `var`, then N slots and the indices of the step.
template <typename T, typename Tindex, bool kRelease>
class DynamicRowsOp : public OpKernel {
 public:
  explicit DynamicRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_slots_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int num_tables = (kRelease ? 1 : 0) + num_slots_;
    LockedVariables vars;
    OP_REQUIRES_OK(ctx, vars.Acquire(ctx, 0, kNumIndexVars + num_tables, true));
    const Tensor& indices = ctx->input(kNumIndexVars + num_tables);
    OP_REQUIRES(ctx, indices.dims() == 1,
                errors::InvalidArgument("indices must be a vector, got shape ",
                                        indices.shape().DebugString()));
    dynamic::IndexView view;
    OP_REQUIRES_OK(ctx, ViewIndex(ctx, &vars, &view));
    const auto ids = indices.flat<Tindex>();
    if (num_tables == 0) {  // ClearStale before the optimizer has slots
      for (int64_t i = 0; i < ids.size(); ++i) dynamic::TakeStale(view, ids(i));
      return;
    }
    // The pool and its slots: [capacity + 1, ...] (the last row is the shared
    // zero row), of dtype T.
    const TensorShape& shape = vars.tensor(kNumIndexVars)->shape();
    for (int i = kNumIndexVars; i < kNumIndexVars + num_tables; ++i) {
      const Tensor* t = vars.tensor(i);
      OP_REQUIRES(ctx, t->IsInitialized() && t->dtype() == DataTypeToEnum<T>::v(),
                  errors::InvalidArgument(requested_input(i), " must be an initialized ",
                                          DataTypeString(DataTypeToEnum<T>::v()), " variable"));
      OP_REQUIRES(ctx, t->shape() == shape && shape.dims() >= 1 &&
                           shape.dim_size(0) == view.capacity + 1,
                  errors::InvalidArgument(requested_input(i), " must have ",
                                          view.capacity + 1, " rows like the pool, got shape ",
                                          t->shape().DebugString()));
    }
    const int64_t width = shape.dims() == 0 ? 0 : shape.num_elements() / shape.dim_size(0);
    std::vector<T*> data;
    for (int i = kNumIndexVars; i < kNumIndexVars + num_tables; ++i) {
      OP_REQUIRES_OK(ctx, vars.template CopyOnWrite<CPUDevice>(ctx, i));
      data.push_back(vars.tensor(i)->template flat<T>().data());
    }
    auto clear_slots = [&](int64_t row) {
      for (size_t k = kRelease ? 1 : 0; k < data.size(); ++k) {
        std::fill(data[k] + row * width, data[k] + (row + 1) * width, T(0));
      }
    };
    std::vector<int64_t> released;
    for (int64_t i = 0; i < ids.size(); ++i) {
      const int64_t row = static_cast<int64_t>(ids(i));
      if (!kRelease) {
        if (dynamic::TakeStale(view, row)) clear_slots(row);
        continue;
      }
      if (row < 0 || row >= view.capacity) continue;
      const T* x = data[0] + row * width;
      bool zero = true;
      for (int64_t j = 0; j < width && zero; ++j) zero = x[j] == T(0);
      if (zero && dynamic::Release(view, row)) {
        clear_slots(row);
        released.push_back(row);
      }
    }
    if (kRelease) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(
                              0, TensorShape({static_cast<int64_t>(released.size())}), &out));
      std::copy(released.begin(), released.end(), out->flat<int64_t>().data());
    }
  }

 private:
  int num_slots_ = 0;
};

template <typename T>
class DynamicWriteRowsOp : public OpKernel {
 public:
  explicit DynamicWriteRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows = ctx->input(1);
    const Tensor& values = ctx->input(2);
    if (rows.NumElements() == 0) return;  // nothing admitted: not even a lock
    LockedVariables vars;
    OP_REQUIRES_OK(ctx, vars.Acquire(ctx, 0, 1, true));
    Tensor* var = vars.tensor(0);
    OP_REQUIRES(ctx, var->IsInitialized() && var->dtype() == DataTypeToEnum<T>::v() &&
                         var->dims() >= 1,
                errors::InvalidArgument("var must be an initialized variable of rank >= 1 "
                                        "and dtype ", DataTypeString(DataTypeToEnum<T>::v())));
    const int64_t num_rows = var->dim_size(0);
    const int64_t width = var->NumElements() / std::max<int64_t>(num_rows, 1);
    OP_REQUIRES(ctx, rows.dims() == 1 && values.NumElements() == rows.NumElements() * width,
                errors::InvalidArgument("values must hold one row of ", width,
                                        " per entry of rows"));
    const auto ids = rows.flat<int64_t>();
    for (int64_t i = 0; i < ids.size(); ++i) {
      OP_REQUIRES(ctx, ids(i) >= 0 && ids(i) < num_rows,
                  errors::InvalidArgument("rows[", i, "] = ", ids(i), " is not in [0, ",
                                          num_rows, ")"));
    }
    OP_REQUIRES_OK(ctx, vars.CopyOnWrite<CPUDevice>(ctx, 0));
    T* data = vars.tensor(0)->flat<T>().data();
    const T* src = values.flat<T>().data();
    for (int64_t i = 0; i < ids.size(); ++i) {
      std::copy(src + i * width, src + (i + 1) * width, data + ids(i) * width);
    }
  }
};

class DynamicShardOp : public OpKernel {
 public:
  explicit DynamicShardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_shards", &num_shards_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids = ctx->input(0);
    Tensor* shards = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ids.shape(), &shards));
    const auto in = ids.flat<int64_t>();
    auto out = shards->flat<int32_t>();
    for (int64_t i = 0; i < in.size(); ++i) out(i) = dynamic::ShardOf(in(i), num_shards_);
  }

 private:
  int32_t num_shards_ = 1;
};

REGISTER_KERNEL_BUILDER(Name("GroupLassoDynamicLookup").Device(::tensorflow::DEVICE_CPU),
                        DynamicLookupOp);
REGISTER_KERNEL_BUILDER(Name("GroupLassoDynamicShard").Device(::tensorflow::DEVICE_CPU),
                        DynamicShardOp);
REGISTER_KERNEL_BUILDER(
    Name("GroupLassoDynamicWriteRows").Device(::tensorflow::DEVICE_CPU).TypeConstraint<float>("T"),
    DynamicWriteRowsOp<float>);
REGISTER_KERNEL_BUILDER(
    Name("GroupLassoDynamicWriteRows").Device(::tensorflow::DEVICE_CPU).TypeConstraint<double>("T"),
    DynamicWriteRowsOp<double>);

#define GL_REGISTER_ROWS_OPS(T, Tindex)                                                   \
  REGISTER_KERNEL_BUILDER(Name("GroupLassoDynamicClearStale")                            \
                              .Device(::tensorflow::DEVICE_CPU)                           \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<Tindex>("Tindices"),                        \
                          DynamicRowsOp<T, Tindex, false>);                               \
  REGISTER_KERNEL_BUILDER(Name("GroupLassoDynamicRelease")                                \
                              .Device(::tensorflow::DEVICE_CPU)                           \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<Tindex>("Tindices"),                        \
                          DynamicRowsOp<T, Tindex, true>);
GL_REGISTER_ROWS_OPS(float, int32_t)
GL_REGISTER_ROWS_OPS(float, int64_t)
GL_REGISTER_ROWS_OPS(double, int32_t)
GL_REGISTER_ROWS_OPS(double, int64_t)
#undef GL_REGISTER_ROWS_OPS

}  // namespace group_lasso_tf
