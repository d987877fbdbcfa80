// group_lasso_tf._core: the C++ row step (cc/group_lasso) over NumPy arrays,
// without TensorFlow. Arrays are updated in place.
//
//   _core.apply_dense(rule, var, slots, grad, lr, l1, l21, l2, hyper,
//                     flag=False, hessian=None)
//   _core.apply_sparse(rule, var, slots, grad, indices, lr, l1, l21, l2,
//                      hyper, flag=False, hessian=None)
//
// `rule` is one of RULES, the rule table of cc/group_lasso/rules.h
// (GROUP_LASSO_RULES); a rule that reads a Hessian estimate (HESSIAN_RULES)
// requires `hessian`, the Hessian-diagonal estimate shaped like grad, and the
// others refuse it; `slots` lists the rule's slots in op order (SLOT_NAMES,
// linear last); `hyper` its hyperparameters in op order (HYPER_NAMES);
// `flag` is the rule's boolean op attribute (FLAGS, e.g. use_nesterov).
// Everything is validated before any array is written; errors are
// ValueError/TypeError naming the argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "group_lasso/apply.h"
#include "group_lasso/checks.h"

namespace py = pybind11;

namespace {

std::string ShapeString(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (i + 1 < a.ndim() || a.ndim() == 1) s += ",";
    if (i + 1 < a.ndim()) s += " ";
  }
  return s + ")";
}

bool SameShape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (a.shape(i) != b.shape(i)) return false;
  }
  return true;
}

// The variable and its slots: same dtype T, same shape, C-contiguous,
// writeable (they are updated in place, so no silent copies are allowed).
template <typename T>
T* WritableData(py::array& a, const std::string& name) {
  if (!py::isinstance<py::array_t<T>>(a) ||
      !a.dtype().is(py::dtype::of<T>())) {
    throw py::type_error(name + " must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(name + " must be C-contiguous (it is updated in place)");
  }
  if (!a.writeable()) {
    throw py::value_error(name + " must be writeable (it is updated in place)");
  }
  return static_cast<T*>(a.mutable_data());
}

template <typename Rule, typename T>
void Apply(py::array var, std::vector<py::array> slots, py::array grad_in,
           py::object indices_in, double lr, double l1, double l21, double l2,
           std::vector<double> hyper_in, bool flag, py::object hessian_in) {
  const bool sparse = !indices_in.is_none();
  if (Rule::kUsesHessian == hessian_in.is_none()) {
    throw py::value_error(Rule::kUsesHessian
                              ? "hessian (the Hessian-diagonal estimate) is required by this rule"
                              : std::string("hessian is not accepted by the ") +
                                    Rule::kName + " rule (it reads no Hessian estimate)");
  }
  if (static_cast<int>(slots.size()) != Rule::kNumSlots) {
    throw py::value_error("slots must hold " + std::to_string(Rule::kNumSlots) +
                          " arrays, got " + std::to_string(slots.size()));
  }
  if (static_cast<int>(hyper_in.size()) != Rule::kNumHyper) {
    throw py::value_error("hyper must hold " + std::to_string(Rule::kNumHyper) +
                          " values, got " + std::to_string(hyper_in.size()));
  }
  T* var_data = WritableData<T>(var, "var");
  T* slot_data[Rule::kNumSlots];
  for (int k = 0; k < Rule::kNumSlots; ++k) {
    const std::string name = std::string("slots[") + std::to_string(k) + "]";
    slot_data[k] = WritableData<T>(slots[k], name);
    if (!SameShape(slots[k], var)) {
      throw py::value_error(name + " must have the shape of var " +
                            ShapeString(var) + ", got " + ShapeString(slots[k]));
    }
  }
  T hyper[Rule::kNumHyper > 0 ? Rule::kNumHyper : 1];
  for (int k = 0; k < Rule::kNumHyper; ++k) hyper[k] = static_cast<T>(hyper_in[k]);
  const std::string bad = group_lasso::CheckHyper<Rule, T>(
      static_cast<T>(lr), static_cast<T>(l1), static_cast<T>(l21),
      static_cast<T>(l2), hyper);
  if (!bad.empty()) throw py::value_error(bad);

  // The gradient may be any float array; it is converted (never written).
  auto grad = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(grad_in);
  if (!grad) throw py::type_error("grad must be a numeric array");
  const int64_t rows = var.ndim() == 0 ? 1 : var.shape(0);
  const int64_t dim = rows == 0 ? 0 : var.size() / rows;
  py::array_t<T, py::array::c_style | py::array::forcecast> hessian;
  if (Rule::kUsesHessian) {
    hessian = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(hessian_in);
    if (!hessian) throw py::type_error("hessian must be a numeric array");
    if (!SameShape(hessian, grad)) {
      throw py::value_error("hessian must have the shape of grad " + ShapeString(grad) +
                            ", got " + ShapeString(hessian));
    }
  }
  const T* h = Rule::kUsesHessian ? hessian.data() : nullptr;

  if (!sparse) {
    if (!SameShape(grad, var)) {
      throw py::value_error("grad must have the shape of var " + ShapeString(var) +
                            ", got " + ShapeString(grad));
    }
    if (rows == 0 || dim == 0) return;
    const auto config = group_lasso::MakeStepConfig<Rule, T>(
        lr, l1, l21, l2, hyper, flag, dim);
    const T* g = grad.data();
    py::gil_scoped_release release;
    group_lasso::ApplyDense(config, rows, dim, var_data, slot_data, g, h,
                            group_lasso::SerialFor());
    return;
  }

  py::array indices_arr = py::array::ensure(indices_in);
  if (!indices_arr || indices_arr.ndim() != 1 ||
      (!indices_arr.dtype().is(py::dtype::of<int32_t>()) &&
       !indices_arr.dtype().is(py::dtype::of<int64_t>()))) {
    throw py::type_error("indices must be a 1-D array of int32 or int64");
  }
  auto indices = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(indices_arr);
  const int64_t n = indices.shape(0);
  if (var.ndim() < 1) throw py::value_error("var must have rank >= 1 for a sparse update");
  bool grad_ok = grad.ndim() == var.ndim() && grad.shape(0) == n;
  for (py::ssize_t i = 1; grad_ok && i < var.ndim(); ++i) {
    grad_ok = grad.shape(i) == var.shape(i);
  }
  if (!grad_ok) {
    throw py::value_error("grad must have shape [len(indices)] + var.shape[1:], got " +
                          ShapeString(grad) + " for var " + ShapeString(var) +
                          " and " + std::to_string(n) + " indices");
  }
  const int64_t* ids = indices.data();
  const int64_t bad_pos = group_lasso::FirstOutOfRange(ids, n, rows);
  if (bad_pos >= 0) {
    throw py::value_error("indices[" + std::to_string(bad_pos) + "] = " +
                          std::to_string(ids[bad_pos]) + " is not in [0, " +
                          std::to_string(rows) + ")");
  }
  if (n == 0 || dim == 0) return;
  const auto config = group_lasso::MakeStepConfig<Rule, T>(
      lr, l1, l21, l2, hyper, flag, dim);
  const T* g = grad.data();
  py::gil_scoped_release release;
  group_lasso::ApplySparseIds(config, dim, var_data, slot_data, g, h, ids, n,
                              group_lasso::SerialFor());
}

template <typename Rule>
void Dispatch(py::array var, std::vector<py::array> slots, py::array grad,
              py::object indices, double lr, double l1, double l21, double l2,
              std::vector<double> hyper, bool flag, py::object hessian) {
  if (var.dtype().is(py::dtype::of<float>())) {
    Apply<Rule, float>(var, slots, grad, indices, lr, l1, l21, l2, hyper, flag, hessian);
  } else if (var.dtype().is(py::dtype::of<double>())) {
    Apply<Rule, double>(var, slots, grad, indices, lr, l1, l21, l2, hyper, flag, hessian);
  } else {
    throw py::type_error("var must have dtype float32 or float64, got " +
                         std::string(py::str(var.dtype())));
  }
}

void ApplyByName(const std::string& rule, py::array var,
                 std::vector<py::array> slots, py::array grad,
                 py::object indices, double lr, double l1, double l21,
                 double l2, std::vector<double> hyper, bool flag,
                 py::object hessian) {
  std::string known;
#define GL_DISPATCH(RULE)                                                                    \
  if (rule == group_lasso::RULE::kName) {                                                    \
    return Dispatch<group_lasso::RULE>(var, slots, grad, indices, lr, l1, l21, l2, hyper,    \
                                       flag, hessian);                                       \
  }                                                                                          \
  known += std::string(known.empty() ? "" : ", ") + group_lasso::RULE::kName;
  GROUP_LASSO_RULES(GL_DISPATCH)
#undef GL_DISPATCH
  throw py::value_error("rule must be one of " + known + "; got " + rule);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "The group-lasso row step of cc/group_lasso over NumPy arrays, in place.";
  // The rule table, as Python sees it (group_lasso_tf/rules.py is checked
  // against these by tests/test_rule_table.py).
  py::list rules, hessian_rules;
  py::dict slot_names, hyper_names, flags;
#define GL_DESCRIBE(RULE)                                                               \
  {                                                                                     \
    using R = group_lasso::RULE;                                                        \
    rules.append(R::kName);                                                             \
    if (R::kUsesHessian) hessian_rules.append(R::kName);                                \
    slot_names[R::kName] = std::vector<std::string>(R::kSlotNames, R::kSlotNames + R::kNumSlots); \
    std::vector<std::string> hyper;                                                     \
    for (int k = 0; k < R::kNumHyper; ++k) hyper.push_back(R::kHyper[k].name);          \
    hyper_names[R::kName] = hyper;                                                      \
    flags[R::kName] = R::kFlag == nullptr ? py::object(py::none()) : py::str(R::kFlag); \
  }
  GROUP_LASSO_RULES(GL_DESCRIBE)
#undef GL_DESCRIBE
  m.attr("RULES") = py::tuple(rules);
  m.attr("HESSIAN_RULES") = py::tuple(hessian_rules);
  m.attr("SLOT_NAMES") = slot_names;
  m.attr("HYPER_NAMES") = hyper_names;
  m.attr("FLAGS") = flags;
  m.def(
      "apply_dense",
      [](const std::string& rule, py::array var, std::vector<py::array> slots,
         py::array grad, double lr, double l1, double l21, double l2,
         std::vector<double> hyper, bool flag, py::object hessian) {
        ApplyByName(rule, var, slots, grad, py::none(), lr, l1, l21, l2, hyper, flag, hessian);
      },
      py::arg("rule"), py::arg("var"), py::arg("slots"), py::arg("grad"),
      py::arg("lr"), py::arg("l1"), py::arg("l21"), py::arg("l2"),
      py::arg("hyper"), py::arg("flag") = false, py::arg("hessian") = py::none(),
      "One step on every row of var (and its slots), in place.");
  m.def(
      "apply_sparse",
      [](const std::string& rule, py::array var, std::vector<py::array> slots,
         py::array grad, py::object indices, double lr, double l1, double l21,
         double l2, std::vector<double> hyper, bool flag, py::object hessian) {
        ApplyByName(rule, var, slots, grad, indices, lr, l1, l21, l2, hyper, flag, hessian);
      },
      py::arg("rule"), py::arg("var"), py::arg("slots"), py::arg("grad"),
      py::arg("indices"), py::arg("lr"), py::arg("l1"), py::arg("l21"),
      py::arg("l2"), py::arg("hyper"), py::arg("flag") = false,
      py::arg("hessian") = py::none(),
      "One lazy step on the rows named by indices (duplicates summed), in place.");
}
