// The proximal row step shared by every optimizer of the family (paper.md):
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
  const T clipped = l < -t ? -t : (l > t ? t : l);
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
// the plain optimizer for any initial weights (paper.md).
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
// multiplied by the group factor once the row's norm is known.
template <typename Rule, typename T>
GL_HOST_DEVICE inline T ElementPrePass(
    const typename Rule::template Params<T>& params, const Thresholds<T>& th,
    bool fresh, T g, T* x, T* const* slots, int64_t j) {
  T* lin = slots[Rule::kNumSlots - 1];
  const T x_old = *x;
  const ElementStep<T> e = Rule::Step(params, g, x_old, slots, j);
  const T p_old = fresh ? T(0) : e.p_old;
  const T l = lin[j] + e.a - (e.p_new - p_old) * x_old;
  lin[j] = l;
  const T s = ShrinkElement(l, th.l1);
  *x = s / (e.p_new + th.l2_denominator);
  return s;
}

// One full row step, in place. `x` and `slots[k]` point at the row (d
// elements each); `g` is the row's (duplicate-summed) gradient; the last
// slot is the linear slot.
//
// The row is read and written once: the first loop leaves s / (p_new + t2)
// in x, the second rescales it by the group factor while the row is still in
// L1 cache, so no scratch buffer is needed.
template <typename Rule, typename T>
GL_HOST_DEVICE inline void UpdateRow(
    const typename Rule::template Params<T>& params, const Thresholds<T>& th,
    int64_t d, T* x, T* const* slots, const T* g) {
  const bool fresh = IsFreshRow<Rule>(slots[Rule::kNumSlots - 1], d);
  T norm2 = T(0);
  for (int64_t j = 0; j < d; ++j) {
    const T s = ElementPrePass<Rule>(params, th, fresh, g[j], x + j, slots, j);
    norm2 += s * s;
  }
  const T factor = GroupShrinkFactor(Sqrt(norm2), th.l21_sqrt_d);
  if (factor == T(0)) {
    // Assigned, not multiplied: the row becomes exactly +0.0 even where the
    // first pass left an infinity or a negative value.
    for (int64_t j = 0; j < d; ++j) x[j] = T(0);
  } else if (factor != T(1)) {
    for (int64_t j = 0; j < d; ++j) x[j] *= factor;
  }
}

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_PROX_H_
