// The proximal row step shared by every optimizer of the family
// (docs/algorithm.md, "One step, per row"):
//
//   lin' = lin + a - (p_new - p_old) x          (p_old = 0 on a fresh row)
//   s    = clip(lin', -t1, t1) - lin'            (element-wise soft threshold)
//   x'   = 0                                     if ||s||_2 <= t21 sqrt(d)
//        = s (1 - t21 sqrt(d) / ||s||_2) / (p_new + t2)   otherwise
//
// This is the only implementation of the step in C++: the CPU kernels, the
// CUDA kernels and the pybind11 module all call into it.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_PROX_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_PROX_H_

#include <cstdint>

#include "group_lasso/rules.h"

namespace group_lasso {

// Soft-thresholded linear slot for one element: clip(l, -t, t) - l.
template <typename T>
GL_HOST_DEVICE inline T ShrinkElement(T l, T t) {
  // Written as min/max selects, which compile to vector min/max.
  const T upper = t < l ? t : l;
  const T clipped = upper < -t ? -t : upper;
  return clipped - l;
}

// The row-wide factor (1 - t21 sqrt(d) / ||s||), or 0 when the whole row is
// removed. With no group strength the factor is exactly 1, also for a row
// whose ||s|| underflows to zero.
template <typename T>
GL_HOST_DEVICE inline T GroupShrinkFactor(T norm, T l21_sqrt_d) {
  if (!(l21_sqrt_d > T(0))) return T(1);
  if (norm <= l21_sqrt_d) return T(0);
  return T(1) - l21_sqrt_d / norm;
}

// Whether a row has never been updated: its linear slot is all zero. The
// first update then uses p_old = 0, which makes the step reduce exactly to
// the plain optimizer for any initial weights (docs/algorithm.md).
template <typename Rule, typename T>
GL_HOST_DEVICE inline bool IsFreshRow(const T* lin, int64_t d) {
  if (!Rule::kFreshRows) return false;
  for (int64_t j = 0; j < d; ++j) {
    if (lin[j] != T(0)) return false;
  }
  return true;
}

// First half of the row step for one element: moment update, linear slot
// update, soft threshold. Returns s and writes s / (p_new + t2) to *x, to be
// multiplied by the group factor once the row's norm is known. old_weight is
// 0 on a fresh row and 1 otherwise (a product, not a branch, so the loop
// vectorizes). hess is the Hessian-diagonal element (0 for rules without one).
// kForm: the rule's form (rules.h), or kAnyForm to read its switches from
// params.
template <typename Rule, int kForm = kAnyForm, typename T>
GL_HOST_DEVICE inline T ElementPrePass(
    const typename Rule::template Params<T>& params, const Thresholds<T>& th,
    T old_weight, T g, T hess, T* x, SlotRows<T, Rule::kNumSlots> slots, int64_t j) {
  T* lin = slots.row[Rule::kNumSlots - 1];
  const T x_old = *x;
  const ElementStep<T> e = Rule::template Step<kForm>(params, g, hess, x_old, slots, j);
  const T p_old = old_weight * e.p_old;  // 0 on a fresh row, else p_old
  const T l = lin[j] + e.a - (e.p_new - p_old) * x_old;
  lin[j] = l;
  const T s = ShrinkElement(l, th.l1);
  *x = s / (e.p_new + th.l2_denominator);
  return s;
}

// The first pass over a row's d elements in form kForm; returns ||s||^2.
template <typename Rule, int kForm, typename T>
GL_HOST_DEVICE inline T RowPrePass(const typename Rule::template Params<T>& params,
                                   const Thresholds<T>& th, T old_weight, int64_t d, T* x,
                                   SlotRows<T, Rule::kNumSlots> row, const T* g,
                                   const T* hess) {
  const typename Rule::template Params<T> local_params = params;
  const Thresholds<T> local_th = th;
  T norm2 = T(0);
  // Element j reads and writes index j of every array only, so the
  // iterations are independent: vectorize them, the norm as a reduction.
  // (-fopenmp-simd makes this pragma work without the OpenMP runtime.)
#pragma omp simd reduction(+ : norm2)
  for (int64_t j = 0; j < d; ++j) {
    const T hess_j = Rule::kUsesHessian ? hess[j] : T(0);
    const T s = ElementPrePass<Rule, kForm>(local_params, local_th, old_weight, g[j], hess_j,
                                            x + j, row, j);
    norm2 += s * s;
  }
  return norm2;
}

// RowPrePass in the row's form: the first form >= kForm equal to `form`.
template <typename Rule, int kForm = 0, typename T>
GL_HOST_DEVICE inline T RowPrePassInForm(int form, const typename Rule::template Params<T>& params,
                                         const Thresholds<T>& th, T old_weight, int64_t d, T* x,
                                         SlotRows<T, Rule::kNumSlots> row, const T* g,
                                         const T* hess) {
  if constexpr (kForm + 1 < Rule::kNumForms) {
    if (form != kForm) {
      return RowPrePassInForm<Rule, kForm + 1>(form, params, th, old_weight, d, x, row, g, hess);
    }
  }
  return RowPrePass<Rule, kForm>(params, th, old_weight, d, x, row, g, hess);
}

// One full row step, in place. `x` and `slots[k]` point at the row (d
// elements each); `g` is the row's (duplicate-summed) gradient and `hess`
// its Hessian-diagonal estimate (read only if Rule::kUsesHessian, may be
// null otherwise); the last slot is the linear slot.
//
// The row is read and written once: the first loop leaves s / (p_new + t2)
// in x, the second rescales it by the group factor while the row is still in
// L1 cache, so no scratch buffer is needed.
template <typename Rule, typename T>
GL_HOST_DEVICE inline void UpdateRow(
    const typename Rule::template Params<T>& params, const Thresholds<T>& th,
    int64_t d, T* x, T* const* slots, const T* g, const T* hess) {
  const T old_weight = IsFreshRow<Rule>(slots[Rule::kNumSlots - 1], d) ? T(0) : T(1);
  SlotRows<T, Rule::kNumSlots> row;
  for (int k = 0; k < Rule::kNumSlots; ++k) row.row[k] = slots[k];
  const T norm2 = RowPrePassInForm<Rule>(Rule::Form(params), params, th, old_weight, d, x, row,
                                         g, hess);
  const T factor = GroupShrinkFactor(Sqrt(norm2), th.l21_sqrt_d);
  if (factor == T(0)) {
    // Assigned, not multiplied: the row becomes exactly +0.0 even where the
    // first pass left an infinity or a negative value.
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) x[j] = T(0);
  } else if (factor != T(1)) {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) x[j] *= factor;
  }
}

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_PROX_H_
