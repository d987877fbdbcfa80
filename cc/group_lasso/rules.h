// Moment rules of the sparse-group-lasso optimizers (paper.md, "The form to
// implement").
//
// Every optimizer of the family is one per-row step: a moment rule that
// differs per optimizer, followed by the same proximal step (prox.h). A rule
// is a small policy type. For one element it updates its own slots and
// returns the numerator `a` (learning rate included) and the preconditioner
// before (`p_old`) and after (`p_new`) the moment update, so that its plain
// update would be x <- x - a / p_new.
//
// Step(params, g, h, x, slots, j) sees the element's gradient g, its
// Hessian-diagonal estimate h (read only by rules with kUsesHessian; 0 for
// the others), the weight x and the slot rows at column j.
//
// Framework-free: this header is shared by the TensorFlow CPU kernels, the
// CUDA kernels and the pybind11 module.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_RULES_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_RULES_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GL_HOST_DEVICE __host__ __device__
#else
#define GL_HOST_DEVICE
#endif

namespace group_lasso {

GL_HOST_DEVICE inline float Sqrt(float x) { return sqrtf(x); }
GL_HOST_DEVICE inline double Sqrt(double x) { return sqrt(x); }
GL_HOST_DEVICE inline float Pow(float x, float y) { return powf(x, y); }
GL_HOST_DEVICE inline double Pow(double x, double y) { return pow(x, y); }

// x^(-power) for FTRL's learning_rate_power; -0.5 (the default) is a square
// root, which is both exact and much cheaper than pow.
template <typename T>
GL_HOST_DEVICE inline T PowNeg(T x, T power) {
  return power == T(-0.5) ? Sqrt(x) : Pow(x, -power);
}

// The slot rows of one variable row, by value: inlined into the row loop its
// pointers live in registers (a pointer array in memory would be reloaded on
// every element and keep the loop from vectorizing).
template <typename T, int N>
struct SlotRows {
  T* row[N];
};

template <typename T>
struct ElementStep {
  T a;      // numerator of the plain update, learning rate included
  T p_old;  // preconditioner before the moment update
  T p_new;  // preconditioner after the moment update
};

// The three thresholds of the proximal step for one row (prox.h).
template <typename T>
struct Thresholds {
  T l1;              // soft threshold on the linear slot
  T l21_sqrt_d;      // group threshold on ||s||_2, sqrt(d) included
  T l2_denominator;  // added to p_new in the final division
};

// Optimizers whose linear slot is the learning rate times the paper's z
// ("version 4" of the official code): every threshold scales with eta.
struct LrScaledStrengths {
  template <typename T>
  GL_HOST_DEVICE static Thresholds<T> MakeThresholds(T lr, T l1, T l21, T l2,
                                                     const T*, int64_t d) {
    return {lr * l1, lr * l21 * Sqrt(static_cast<T>(d)), T(2) * lr * l2};
  }
};

// Names of the hyperparameter inputs after the common lr, l1, l21, l2 are
// listed in each rule's comment, in op-input order; `h` points at them.

// Group Adam. Slots: m, v, linear. Hyperparameters: beta1_power,
// beta2_power, beta1, beta2, epsilon.
struct AdamRule : LrScaledStrengths {
  static constexpr int kNumSlots = 3;
  static constexpr int kNumHyper = 5;
  static constexpr const char* kHyperNames[kNumHyper] = {"beta1_power", "beta2_power", "beta1", "beta2", "epsilon"};
  static constexpr bool kFreshRows = true;
  static constexpr bool kUsesHessian = false;
  template <typename T>
  struct Params {
    T alpha;  // lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    T one_minus_beta1, one_minus_beta2, epsilon;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* h, bool) {
    return {lr * Sqrt(T(1) - h[1]) / (T(1) - h[0]), T(1) - h[2], T(1) - h[3],
            h[4]};
  }
  // The two moments, written as Keras writes them (m += (g - m)(1 - b1)) so
  // that zero strengths reproduce keras.optimizers.Adam to the last bits.
  template <typename T>
  GL_HOST_DEVICE static void UpdateMoments(const Params<T>& p, T g, T* m,
                                           T* v) {
    *m += (g - *m) * p.one_minus_beta1;
    *v += (g * g - *v) * p.one_minus_beta2;
  }
  template <typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T m = slot.row[0][j];
    T v = slot.row[1][j];
    const T p_old = Sqrt(v) + p.epsilon;
    UpdateMoments(p, g, &m, &v);
    slot.row[0][j] = m;
    slot.row[1][j] = v;
    return {p.alpha * m, p_old, Sqrt(v) + p.epsilon};
  }
};

// Group AMSGrad. Slots: m, v, vhat, linear. Hyperparameters as Adam.
struct AMSGradRule : LrScaledStrengths {
  static constexpr int kNumSlots = 4;
  static constexpr int kNumHyper = 5;
  static constexpr const char* kHyperNames[kNumHyper] = {"beta1_power", "beta2_power", "beta1", "beta2", "epsilon"};
  static constexpr bool kFreshRows = true;
  static constexpr bool kUsesHessian = false;
  template <typename T>
  using Params = AdamRule::Params<T>;
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* h, bool nesterov) {
    return AdamRule::MakeParams(lr, h, nesterov);
  }
  template <typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T m = slot.row[0][j];
    T v = slot.row[1][j];
    T vhat = slot.row[2][j];
    const T p_old = Sqrt(vhat) + p.epsilon;
    AdamRule::UpdateMoments(p, g, &m, &v);
    vhat = vhat > v ? vhat : v;
    slot.row[0][j] = m;
    slot.row[1][j] = v;
    slot.row[2][j] = vhat;
    return {p.alpha * m, p_old, Sqrt(vhat) + p.epsilon};
  }
};

// Group AdaHessian (Yao et al., 2021, epsilon-hat form): Adam whose second
// moment averages the squared Hessian-diagonal estimate h instead of g^2,
// with a Hessian power k. Slots: m, v, linear. Hyperparameters:
// beta1_power, beta2_power, beta1, beta2, epsilon, hessian_power.
//
//   m' = b1 m + (1 - b1) g;   v' = b2 v + (1 - b2) h^2
//   a  = lr (1 - b2^t)^(k/2) / (1 - b1^t) m';   p = v^(k/2) + epsilon
struct AdaHessianRule : LrScaledStrengths {
  static constexpr int kNumSlots = 3;
  static constexpr int kNumHyper = 6;
  static constexpr const char* kHyperNames[kNumHyper] = {"beta1_power", "beta2_power", "beta1", "beta2", "epsilon", "hessian_power"};
  static constexpr bool kFreshRows = true;
  static constexpr bool kUsesHessian = true;
  template <typename T>
  struct Params {
    T alpha;  // lr (1 - beta2^t)^(k/2) / (1 - beta1^t)
    T one_minus_beta1, one_minus_beta2, epsilon;
    T half_power;  // k / 2
  };
  // v^(k/2); k = 1 (the default) is a square root, exact and cheap.
  template <typename T>
  GL_HOST_DEVICE static T HalfPower(T v, T half_power) {
    return half_power == T(0.5) ? Sqrt(v) : Pow(v, half_power);
  }
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* h, bool) {
    const T half_power = h[5] / T(2);
    return {lr * HalfPower(T(1) - h[1], half_power) / (T(1) - h[0]),
            T(1) - h[2], T(1) - h[3], h[4], half_power};
  }
  template <typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T h, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T m = slot.row[0][j];
    T v = slot.row[1][j];
    const T p_old = HalfPower(v, p.half_power) + p.epsilon;
    m += (g - m) * p.one_minus_beta1;
    v += (h * h - v) * p.one_minus_beta2;
    slot.row[0][j] = m;
    slot.row[1][j] = v;
    return {p.alpha * m, p_old, HalfPower(v, p.half_power) + p.epsilon};
  }
};

// Group Adagrad. Slots: accumulator, linear. Hyperparameters: epsilon.
struct AdagradRule : LrScaledStrengths {
  static constexpr int kNumSlots = 2;
  static constexpr int kNumHyper = 1;
  static constexpr const char* kHyperNames[kNumHyper] = {"epsilon"};
  static constexpr bool kFreshRows = true;
  static constexpr bool kUsesHessian = false;
  template <typename T>
  struct Params {
    T lr, epsilon;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* h, bool) {
    return {lr, h[0]};
  }
  template <typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T acc = slot.row[0][j];
    const T p_old = Sqrt(acc + p.epsilon);
    acc += g * g;
    slot.row[0][j] = acc;
    return {p.lr * g, p_old, Sqrt(acc + p.epsilon)};
  }
};

// Group Momentum (SGD with heavy-ball or Nesterov momentum). Slots:
// momentum, linear. Hyperparameters: momentum. The op attr use_nesterov
// selects Nesterov's form.
struct MomentumRule : LrScaledStrengths {
  static constexpr int kNumSlots = 2;
  static constexpr int kNumHyper = 1;
  static constexpr const char* kHyperNames[kNumHyper] = {"momentum"};
  static constexpr bool kFreshRows = true;
  static constexpr bool kUsesHessian = false;
  template <typename T>
  struct Params {
    T lr, momentum;
    bool nesterov;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* h, bool nesterov) {
    return {lr, h[0], nesterov};
  }
  template <typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    // Keras's SGD: m' = mu m - lr g; x += m' (or mu m' - lr g with Nesterov).
    const T m = p.momentum * slot.row[0][j] - p.lr * g;
    slot.row[0][j] = m;
    const T step = p.nesterov ? p.momentum * m - p.lr * g : m;
    return {-step, T(1), T(1)};
  }
};

// Group FTRL: Keras's Ftrl plus l21, in Keras's own units (the linear slot
// is not scaled by the learning rate, so neither are the thresholds).
// Slots: accumulator, linear. Hyperparameters: l2_shrinkage, beta,
// lr_power.
struct FtrlRule {
  static constexpr int kNumSlots = 2;
  static constexpr int kNumHyper = 3;
  static constexpr const char* kHyperNames[kNumHyper] = {"l2_shrinkage", "beta", "lr_power"};
  static constexpr bool kFreshRows = false;
  static constexpr bool kUsesHessian = false;
  template <typename T>
  struct Params {
    T lr, two_l2_shrinkage, lr_power;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* h, bool) {
    return {lr, T(2) * h[0], h[2]};
  }
  // The beta term joins l2 in the denominator: 2 (l2 + beta / (2 lr)).
  template <typename T>
  GL_HOST_DEVICE static Thresholds<T> MakeThresholds(T lr, T l1, T l21, T l2,
                                                     const T* h, int64_t d) {
    return {l1, l21 * Sqrt(static_cast<T>(d)), T(2) * l2 + h[1] / lr};
  }
  template <typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T x,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T acc = slot.row[0][j];
    const T p_old = PowNeg(acc, p.lr_power) / p.lr;
    acc += g * g;
    slot.row[0][j] = acc;
    return {g + p.two_l2_shrinkage * x, p_old, PowNeg(acc, p.lr_power) / p.lr};
  }
};

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_RULES_H_
