// Op registrations of the sparse-group-lasso optimizers.
//
// Like TensorFlow's ResourceApply* training ops, each op takes resource
// handles of the variable and its slots (the linear slot last) and updates
// them in place; it has no outputs. Hyperparameters are scalar tensors so a
// learning-rate schedule needs no retracing. The Sparse variants take
// `indices` and one gradient row per index; duplicate indices are summed.
//
// Every op checks its inputs before writing anything: strengths l1, l21, l2
// and lr must be finite and >= 0, ids in [0, rows), shapes consistent.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace group_lasso_tf {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Shape of variable input i, when the resource handle carries it.
static ShapeHandle VariableShape(InferenceContext* c, int i) {
  const auto* handle_data = c->input_handle_shapes_and_types(i);
  if (handle_data == nullptr || handle_data->empty()) {
    return c->UnknownShape();
  }
  return (*handle_data)[0].shape;
}

// Inputs: num_vars resources, num_scalars scalars, grad, then (with_hessian)
// the Hessian-diagonal estimate, shaped like grad, then (stored) the scalar
// `estimate`, then (sparse) indices.
static Status ApplyShapeFn(InferenceContext* c, int num_vars, int num_scalars,
                           bool sparse, bool with_hessian = false,
                           bool stored = false) {
  ShapeHandle var = VariableShape(c, 0);
  for (int i = 1; i < num_vars; ++i) {
    TF_RETURN_IF_ERROR(c->Merge(var, VariableShape(c, i), &var));
  }
  ShapeHandle unused;
  for (int i = num_vars; i < num_vars + num_scalars; ++i) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  }
  const int grad_index = num_vars + num_scalars;
  ShapeHandle grad = c->input(grad_index);
  if (with_hessian) {
    TF_RETURN_IF_ERROR(c->Merge(grad, c->input(grad_index + 1), &grad));
  }
  if (stored) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(grad_index + 2), 0, &unused));
  }
  const int indices_index = grad_index + (with_hessian ? 2 : 1) + (stored ? 1 : 0);
  if (!sparse) {
    TF_RETURN_IF_ERROR(c->Merge(var, grad, &unused));
    return ::tensorflow::OkStatus();
  }
  ShapeHandle indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(indices_index), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(grad, 1, &grad));
  DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(indices, 0), c->Dim(grad, 0), &n));
  if (c->RankKnown(var)) {
    ShapeHandle var_row, grad_row;
    TF_RETURN_IF_ERROR(c->Subshape(var, 1, &var_row));
    TF_RETURN_IF_ERROR(c->Subshape(grad, 1, &grad_row));
    TF_RETURN_IF_ERROR(c->Merge(var_row, grad_row, &unused));
  }
  return ::tensorflow::OkStatus();
}

#define GL_DENSE_SHAPE(vars, scalars) \
  [](InferenceContext* c) { return ApplyShapeFn(c, vars, scalars, false); }
#define GL_SPARSE_SHAPE(vars, scalars) \
  [](InferenceContext* c) { return ApplyShapeFn(c, vars, scalars, true); }
#define GL_DENSE_HESSIAN_SHAPE(vars, scalars) \
  [](InferenceContext* c) { return ApplyShapeFn(c, vars, scalars, false, true); }
#define GL_SPARSE_HESSIAN_SHAPE(vars, scalars) \
  [](InferenceContext* c) { return ApplyShapeFn(c, vars, scalars, true, true); }
#define GL_DENSE_STORED_SHAPE(vars, scalars) \
  [](InferenceContext* c) { return ApplyShapeFn(c, vars, scalars, false, true, true); }
#define GL_SPARSE_STORED_SHAPE(vars, scalars) \
  [](InferenceContext* c) { return ApplyShapeFn(c, vars, scalars, true, true, true); }

#define GL_COMMON_HYPER  \
  Input("lr: T")         \
      .Input("l1: T")    \
      .Input("l21: T")   \
      .Input("l2: T")

#define GL_ATTRS                   \
  Attr("T: {float, double}")       \
      .Attr("use_locking: bool = false")

#define GL_SPARSE_ATTRS \
  Attr("Tindices: {int32, int64}")

// ---------------------------------------------------------------- Adam
#define GL_ADAM_HYPER          \
  Input("beta1_power: T")      \
      .Input("beta2_power: T") \
      .Input("beta1: T")       \
      .Input("beta2: T")       \
      .Input("epsilon: T")

REGISTER_OP("ResourceApplyGroupAdam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("grad: T")
    .GL_ATTRS
    .SetShapeFn(GL_DENSE_SHAPE(4, 9))
    .Doc("Group Adam step on every row of var (paper.md), in place.");

REGISTER_OP("ResourceSparseApplyGroupAdam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("grad: T")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS
    .SetShapeFn(GL_SPARSE_SHAPE(4, 9))
    .Doc("Lazy Group Adam step on the rows of var named by indices.");

// ------------------------------------------------------------- AMSGrad
REGISTER_OP("ResourceApplyGroupAMSGrad")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("vhat: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("grad: T")
    .GL_ATTRS
    .SetShapeFn(GL_DENSE_SHAPE(5, 9))
    .Doc("Group AMSGrad step on every row of var, in place.");

REGISTER_OP("ResourceSparseApplyGroupAMSGrad")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("vhat: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("grad: T")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS
    .SetShapeFn(GL_SPARSE_SHAPE(5, 9))
    .Doc("Lazy Group AMSGrad step on the rows of var named by indices.");

// ---------------------------------------------------------- AdaHessian
REGISTER_OP("ResourceApplyGroupAdaHessian")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("hessian_power: T")
    .Input("grad: T")
    .Input("hessian: T")
    .GL_ATTRS
    .SetShapeFn(GL_DENSE_HESSIAN_SHAPE(4, 10))
    .Doc("Group AdaHessian step on every row of var, in place; `hessian` is "
         "the Hessian-diagonal estimate D, shaped like grad.");

REGISTER_OP("ResourceSparseApplyGroupAdaHessian")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("hessian_power: T")
    .Input("grad: T")
    .Input("hessian: T")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS
    .SetShapeFn(GL_SPARSE_HESSIAN_SHAPE(4, 10))
    .Doc("Lazy Group AdaHessian step on the rows of var named by indices; "
         "duplicate indices sum both grad and hessian rows.");

// AdaHessian with a stored estimate (update_every > 1): `hessian_estimate`
// holds each row's last estimate. With `estimate` true, the updated rows'
// `hessian` is used and stored; with it false, `hessian` is not read: a row
// uses its stored estimate, or |g| if it has none yet (all zero).
REGISTER_OP("ResourceApplyGroupAdaHessianStored")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("linear: resource")
    .Input("hessian_estimate: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("hessian_power: T")
    .Input("grad: T")
    .Input("hessian: T")
    .Input("estimate: bool")
    .GL_ATTRS
    .SetShapeFn(GL_DENSE_STORED_SHAPE(5, 10))
    .Doc("Group AdaHessian step with a stored Hessian estimate, in place.");

REGISTER_OP("ResourceSparseApplyGroupAdaHessianStored")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("linear: resource")
    .Input("hessian_estimate: resource")
    .GL_COMMON_HYPER.GL_ADAM_HYPER.Input("hessian_power: T")
    .Input("grad: T")
    .Input("hessian: T")
    .Input("estimate: bool")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS
    .SetShapeFn(GL_SPARSE_STORED_SHAPE(5, 10))
    .Doc("Lazy Group AdaHessian step with a stored Hessian estimate.");

// ------------------------------------------------------------- Adagrad
REGISTER_OP("ResourceApplyGroupAdagrad")
    .Input("var: resource")
    .Input("accumulator: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.Input("epsilon: T")
    .Input("grad: T")
    .GL_ATTRS
    .SetShapeFn(GL_DENSE_SHAPE(3, 5))
    .Doc("Group Adagrad step on every row of var, in place.");

REGISTER_OP("ResourceSparseApplyGroupAdagrad")
    .Input("var: resource")
    .Input("accumulator: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.Input("epsilon: T")
    .Input("grad: T")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS
    .SetShapeFn(GL_SPARSE_SHAPE(3, 5))
    .Doc("Lazy Group Adagrad step on the rows of var named by indices.");

// ------------------------------------------------------------ Momentum
REGISTER_OP("ResourceApplyGroupMomentum")
    .Input("var: resource")
    .Input("momentum_slot: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.Input("momentum: T")
    .Input("grad: T")
    .GL_ATTRS.Attr("use_nesterov: bool = false")
    .SetShapeFn(GL_DENSE_SHAPE(3, 5))
    .Doc("Group Momentum step on every row of var, in place.");

REGISTER_OP("ResourceSparseApplyGroupMomentum")
    .Input("var: resource")
    .Input("momentum_slot: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.Input("momentum: T")
    .Input("grad: T")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS.Attr("use_nesterov: bool = false")
    .SetShapeFn(GL_SPARSE_SHAPE(3, 5))
    .Doc("Lazy Group Momentum step on the rows of var named by indices.");

// ---------------------------------------------------------------- FTRL
#define GL_FTRL_HYPER           \
  Input("l2_shrinkage: T")      \
      .Input("beta: T")         \
      .Input("lr_power: T")

REGISTER_OP("ResourceApplyGroupFtrl")
    .Input("var: resource")
    .Input("accumulator: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_FTRL_HYPER.Input("grad: T")
    .GL_ATTRS
    .SetShapeFn(GL_DENSE_SHAPE(3, 7))
    .Doc("Group FTRL (Keras's Ftrl plus l21) on every row of var, in place.");

REGISTER_OP("ResourceSparseApplyGroupFtrl")
    .Input("var: resource")
    .Input("accumulator: resource")
    .Input("linear: resource")
    .GL_COMMON_HYPER.GL_FTRL_HYPER.Input("grad: T")
    .Input("indices: Tindices")
    .GL_ATTRS.GL_SPARSE_ATTRS
    .SetShapeFn(GL_SPARSE_SHAPE(3, 7))
    .Doc("Lazy Group FTRL step on the rows of var named by indices.");

}  // namespace group_lasso_tf
