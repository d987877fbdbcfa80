// Validation of hyperparameters, shared by the TensorFlow kernels and the
// pybind11 module. Everything is checked before anything is written, and a
// message always names the offending argument.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_CHECKS_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_CHECKS_H_

#include <cmath>
#include <sstream>
#include <string>

#include "group_lasso/rules.h"

namespace group_lasso {

template <typename T>
std::string RangeError(const char* name, T value, const char* range) {
  std::ostringstream out;
  out << name << " must be " << range << ", got " << value;
  return out.str();
}

// Interval checks: "closed" means a <= x <= b, "half-open" a <= x < b.
template <typename T>
bool InClosed(T x, double a, double b) { return x >= a && x <= b; }
template <typename T>
bool InHalfOpen(T x, double a, double b) { return x >= a && x < b; }

// The range check of one hyperparameter (rules.h, HyperSpec).
template <typename T>
std::string CheckRange(const HyperSpec& spec, T x) {
  switch (spec.range) {
    case Range::kUnit:
      return InClosed(x, 0, 1) ? "" : RangeError(spec.name, x, "in [0, 1]");
    case Range::kUnitOpen:
      return InHalfOpen(x, 0, 1) ? "" : RangeError(spec.name, x, "in [0, 1)");
    case Range::kNonNegative:
      return InHalfOpen(x, 0, INFINITY) ? "" : RangeError(spec.name, x, "finite and >= 0");
    case Range::kNonPositive:
      return x <= 0 && std::isfinite(static_cast<double>(x))
                 ? ""
                 : RangeError(spec.name, x, "finite and <= 0");
  }
  return "";
}

// Checks the common hyperparameters (lr, l1, l21, l2), then the rule's own
// (rules.h, kHyper).
// Returns an empty string when all are valid.
template <typename Rule, typename T>
std::string CheckHyper(T lr, T l1, T l21, T l2, const T* hyper) {
  if (!InHalfOpen(lr, 0, INFINITY)) return RangeError("lr", lr, "finite and >= 0");
  if (!InHalfOpen(l1, 0, INFINITY)) return RangeError("l1", l1, "finite and >= 0");
  if (!InHalfOpen(l21, 0, INFINITY)) return RangeError("l21", l21, "finite and >= 0");
  if (!InHalfOpen(l2, 0, INFINITY)) return RangeError("l2", l2, "finite and >= 0");
  if (Rule::kNeedsPositiveLr && !(lr > 0)) {
    return RangeError("lr", lr, (std::string("> 0 for ") + Rule::kOpName).c_str());
  }
  for (int k = 0; k < Rule::kNumHyper; ++k) {
    const std::string bad = CheckRange(Rule::kHyper[k], hyper[k]);
    if (!bad.empty()) return bad;
  }
  return "";
}

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_CHECKS_H_
