// Op registrations of the sparse-group-lasso optimizers, generated from the
// rule table (cc/group_lasso/rules.h, GROUP_LASSO_RULES).
//
// Like TensorFlow's ResourceApply* training ops, each op takes resource
// handles of the variable and its slots (the linear slot last) and updates
// them in place; it has no outputs. Hyperparameters are scalar tensors so a
// learning-rate schedule needs no retracing. Per rule, with its kOpName:
//
//   ResourceApply<kOpName>        every row of var
//   ResourceSparseApply<kOpName>  the rows named by `indices` (duplicates
//                                 summed), one gradient row per index
//
//   ResourceSparseApply<kOpName>Multi
//                                 the sparse step of N tables at once (rules
//                                 that read no Hessian): var, l1, l21, l2,
//                                 grad and indices are lists of N, one per
//                                 table; the slots one [kNumSlots, N] tensor
//                                 of handles (RegisterMultiOp below)
//
// and, for rules that read a Hessian estimate, the same two with the suffix
// "Stored": AdaHessian with a stored estimate (update_every > 1), whose
// resource `hessian_estimate` holds each row's last estimate. With `estimate`
// true, the updated rows' `hessian` is used and stored; with it false,
// `hessian` is not read: a row uses its stored estimate, or |g| if it has
// none yet (all zero).
//
// Inputs, in order (OpLayout in rules.h): var, the rule's slots
// (kSlotNames), [hessian_estimate], lr, l1, l21, l2, the rule's
// hyperparameters (kHyper), grad, [hessian], [estimate], [indices].
//
// Every op checks its inputs before writing anything: strengths l1, l21, l2
// and lr must be finite and >= 0, the rule's hyperparameters in their
// ranges, ids in [0, rows), shapes consistent.
#include <string>

#include "group_lasso/rules.h"
#include "ops/group_lasso_ops.h"
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

template <typename Layout>
static Status ApplyShapeFn(InferenceContext* c, bool sparse, bool with_hessian, bool stored) {
  ShapeHandle var = VariableShape(c, 0);
  for (int i = 1; i < Layout::kNumVars; ++i) {
    TF_RETURN_IF_ERROR(c->Merge(var, VariableShape(c, i), &var));
  }
  ShapeHandle unused;
  for (int i = Layout::kNumVars; i < Layout::kGradInput; ++i) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  }
  ShapeHandle grad = c->input(Layout::kGradInput);
  if (with_hessian) {
    TF_RETURN_IF_ERROR(c->Merge(grad, c->input(Layout::kHessianInput), &grad));
  }
  if (stored) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(Layout::kEstimateInput), 0, &unused));
  }
  if (!sparse) {
    TF_RETURN_IF_ERROR(c->Merge(var, grad, &unused));
    return ::tensorflow::OkStatus();
  }
  ShapeHandle indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(Layout::kIndicesInput), 1, &indices));
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

std::string ApplyOpName(const char* op_name, bool sparse, bool stored) {
  return std::string(sparse ? "ResourceSparseApply" : "ResourceApply") + op_name +
         (stored ? "Stored" : "");
}

template <typename Rule, bool kSparse, bool kStored>
void RegisterApplyOp() {
  using Layout = group_lasso::OpLayout<Rule, kSparse, kStored>;
  const std::string name = ApplyOpName(Rule::kOpName, kSparse, kStored);
  ::tensorflow::register_op::OpDefBuilderWrapper op(name.c_str());
  op.Input("var: resource");
  for (const char* slot : Rule::kSlotNames) op.Input(std::string(slot) + ": resource");
  if (kStored) op.Input("hessian_estimate: resource");
  for (const char* common : {"lr", "l1", "l21", "l2"}) op.Input(std::string(common) + ": T");
  for (int k = 0; k < Rule::kNumHyper; ++k) op.Input(std::string(Rule::kHyper[k].name) + ": T");
  op.Input("grad: T");
  if (Rule::kUsesHessian) op.Input("hessian: T");
  if (kStored) op.Input("estimate: bool");
  if (kSparse) op.Input("indices: Tindices");
  op.Attr("T: {float, double}").Attr("use_locking: bool = false");
  if (kSparse) op.Attr("Tindices: {int32, int64}");
  if (Rule::kFlag != nullptr) op.Attr(std::string(Rule::kFlag) + ": bool = false");
  op.SetShapeFn([](InferenceContext* c) {
    return ApplyShapeFn<Layout>(c, kSparse, Rule::kUsesHessian, kStored);
  });
  op.Doc(std::string(kSparse ? "Lazy " : "") + Rule::kOpName +
         (kStored ? " step with a stored Hessian estimate" : " step") +
         (kSparse ? " on the rows of var named by indices (duplicates summed)"
                  : " on every row of var") +
         ", in place (docs/algorithm.md).");
  op();  // registers the op
}

std::string MultiApplyOpName(const char* op_name) {
  return ApplyOpName(op_name, /*sparse=*/true, /*stored=*/false) + "Multi";
}

// Inputs: var, l1, l21, l2, grad and indices are lists of N (one per table);
// `slots` is one [kNumSlots, N] tensor of resource handles, slot k of table t
// at [k, t] (kSlotNames order); lr and the rule's hyperparameters are scalars
// shared by all. The slots come stacked because a compiled step pays about
// 1.6 us per call for every variable handle it captures, and only the
// optimizer touches them: the optimizer stacks them once, outside the step,
// and the step captures one tensor instead of kNumSlots * N handles
// (docs/benchmarks.md, issue 17). The variables stay a list: the model's
// step captures them anyway, and automatic control dependencies order the
// update after the model's reads through them.
template <typename Rule>
void RegisterMultiOp() {
  static_assert(!Rule::kUsesHessian, "no multi-table op for Hessian rules");
  const std::string name = MultiApplyOpName(Rule::kOpName);
  ::tensorflow::register_op::OpDefBuilderWrapper op(name.c_str());
  op.Input("var: N * resource");
  op.Input("slots: resource");
  op.Input("lr: T");
  for (const char* strength : {"l1", "l21", "l2"}) op.Input(std::string(strength) + ": N * T");
  for (int k = 0; k < Rule::kNumHyper; ++k) op.Input(std::string(Rule::kHyper[k].name) + ": T");
  op.Input("grad: N * T").Input("indices: N * Tindices");
  op.Attr("N: int >= 1").Attr("T: {float, double}").Attr("Tindices: {int32, int64}");
  op.Attr("use_locking: bool = false").Attr("table_names: list(string) = []");
  if (Rule::kFlag != nullptr) op.Attr(std::string(Rule::kFlag) + ": bool = false");
  op.SetShapeFn([](InferenceContext* c) {
    int n = 0;
    TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
    ShapeHandle slots;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(n), 2, &slots));
    const int first_scalar = n + 1;
    const int num_scalars = 1 + 3 * n + Rule::kNumHyper;
    ShapeHandle unused;
    for (int i = first_scalar; i < first_scalar + num_scalars; ++i) {
      TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
    }
    const int first_grad = first_scalar + num_scalars;
    for (int t = 0; t < n; ++t) {
      ShapeHandle indices, grad;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(first_grad + n + t), 1, &indices));
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(first_grad + t), 1, &grad));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(indices, 0), c->Dim(grad, 0), &rows));
    }
    return ::tensorflow::OkStatus();
  });
  op.Doc(std::string("Lazy ") + Rule::kOpName +
         " step on N tables at once: table t's rows named by indices[t] (duplicates summed), "
         "at its strengths l1[t], l21[t], l2[t], in place; equal to N ResourceSparseApply" +
         Rule::kOpName + " steps. Errors name table t by table_names[t] when given. (" +
         "docs/algorithm.md)");
  op();
}

template <typename Rule>
void RegisterRuleOps() {
  RegisterApplyOp<Rule, false, false>();
  RegisterApplyOp<Rule, true, false>();
  if constexpr (!Rule::kUsesHessian) RegisterMultiOp<Rule>();
  if constexpr (Rule::kUsesHessian) {
    RegisterApplyOp<Rule, false, true>();
    RegisterApplyOp<Rule, true, true>();
  }
}

// GroupLassoStackHandles: N resource handles as one [rows, N / rows] tensor
// of handles, row-major (the multi-table ops' `slots`). TensorFlow's Pack has
// no GPU kernel for handles, and an op that reads a handle runs on its
// variable's device; this one has a kernel there, in host memory.
void RegisterStackHandlesOp() {
  ::tensorflow::register_op::OpDefBuilderWrapper op("GroupLassoStackHandles");
  op.Input("handles: N * resource").Output("stacked: resource");
  op.Attr("N: int >= 1").Attr("rows: int >= 1");
  op.SetShapeFn([](InferenceContext* c) {
    int n = 0, rows = 0;
    TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
    TF_RETURN_IF_ERROR(c->GetAttr("rows", &rows));
    if (n % rows != 0) {
      return ::tensorflow::errors::InvalidArgument("rows = ", rows, " must divide N = ", n);
    }
    c->set_output(0, c->Matrix(rows, n / rows));
    return ::tensorflow::OkStatus();
  });
  op.Doc("N resource handles stacked as a [rows, N / rows] tensor, row-major.");
  op();
}

// Registered when the library is loaded, as REGISTER_OP would.
[[maybe_unused]] static const bool kOpsRegistered = [] {
  RegisterStackHandlesOp();
#define GL_REGISTER_OPS(RULE) RegisterRuleOps<group_lasso::RULE>();
  GROUP_LASSO_RULES(GL_REGISTER_OPS)
#undef GL_REGISTER_OPS
  return true;
}();

}  // namespace group_lasso_tf
