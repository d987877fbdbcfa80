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

template <typename T>
std::string CheckRuleHyper(AdamRule, T, const T* h) {
  if (!InHalfOpen(h[0], 0, 1)) return RangeError("beta1_power", h[0], "in [0, 1)");
  if (!InHalfOpen(h[1], 0, 1)) return RangeError("beta2_power", h[1], "in [0, 1)");
  if (!InClosed(h[2], 0, 1)) return RangeError("beta1", h[2], "in [0, 1]");
  if (!InClosed(h[3], 0, 1)) return RangeError("beta2", h[3], "in [0, 1]");
  if (!InHalfOpen(h[4], 0, INFINITY)) return RangeError("epsilon", h[4], "finite and >= 0");
  return "";
}
template <typename T>
std::string CheckRuleHyper(AMSGradRule, T lr, const T* h) {
  return CheckRuleHyper(AdamRule(), lr, h);
}
template <typename T>
std::string CheckRuleHyper(AdaHessianRule, T lr, const T* h) {
  const std::string adam = CheckRuleHyper(AdamRule(), lr, h);
  if (!adam.empty()) return adam;
  if (!InClosed(h[5], 0, 1)) return RangeError("hessian_power", h[5], "in [0, 1]");
  return "";
}
template <typename T>
std::string CheckRuleHyper(AdagradRule, T, const T* h) {
  if (!InHalfOpen(h[0], 0, INFINITY)) return RangeError("epsilon", h[0], "finite and >= 0");
  return "";
}
template <typename T>
std::string CheckRuleHyper(MomentumRule, T, const T* h) {
  if (!InClosed(h[0], 0, 1)) return RangeError("momentum", h[0], "in [0, 1]");
  return "";
}
template <typename T>
std::string CheckRuleHyper(FtrlRule, T lr, const T* h) {
  if (!(lr > 0)) return RangeError("lr", lr, "> 0 for FTRL");
  if (!InHalfOpen(h[0], 0, INFINITY)) return RangeError("l2_shrinkage", h[0], "finite and >= 0");
  if (!InHalfOpen(h[1], 0, INFINITY)) return RangeError("beta", h[1], "finite and >= 0");
  if (!(h[2] <= 0 && std::isfinite(static_cast<double>(h[2])))) {
    return RangeError("lr_power", h[2], "finite and <= 0");
  }
  return "";
}

// Checks the common hyperparameters (lr, l1, l21, l2), then the rule's own.
// Returns an empty string when all are valid.
template <typename Rule, typename T>
std::string CheckHyper(T lr, T l1, T l21, T l2, const T* h) {
  if (!InHalfOpen(lr, 0, INFINITY)) return RangeError("lr", lr, "finite and >= 0");
  if (!InHalfOpen(l1, 0, INFINITY)) return RangeError("l1", l1, "finite and >= 0");
  if (!InHalfOpen(l21, 0, INFINITY)) return RangeError("l21", l21, "finite and >= 0");
  if (!InHalfOpen(l2, 0, INFINITY)) return RangeError("l2", l2, "finite and >= 0");
  return CheckRuleHyper(Rule(), lr, h);
}

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_CHECKS_H_
