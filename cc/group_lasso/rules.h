// The rule table of the sparse-group-lasso optimizers (docs/algorithm.md).
//
// Every optimizer of the family is one per-row step: a moment rule that
// differs per optimizer, followed by the same proximal step (prox.h). A rule
// is a small policy type. For one element it updates its own slots and
// returns the numerator `a` (learning rate included) and the preconditioner
// before (`p_old`) and after (`p_new`) the moment update, so that its plain
// update would be x <- x - a / p_new.
//
// Step(params, g, hess, x, slots, j) sees the element's gradient g, its
// Hessian-diagonal estimate hess (read only by rules with kUsesHessian; 0 for
// the others), the weight x and the slot rows at column j.
//
// A rule also declares what the rest of the code generates from it: its
// Python name, its op name (ops ResourceApply<kOpName> and
// ResourceSparseApply<kOpName>), its slot names (the op's resource inputs,
// linear last), its hyperparameters (the op's scalar inputs after lr, l1,
// l21, l2, each with the range checked before any write), and its boolean
// op attribute, if any. GROUP_LASSO_RULES at the end lists every rule once:
// op registration, CPU and GPU kernel registration and the pybind11 module
// expand it, so a rule listed there exists everywhere, and a rule not listed
// exists nowhere.
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
// root (`is_sqrt`), which is both exact and much cheaper than pow.
template <typename T>
GL_HOST_DEVICE inline T PowNeg(T x, T power, bool is_sqrt) {
  return is_sqrt ? Sqrt(x) : Pow(x, -power);
}

// A rule's per-step switches (Nesterov, centered, FTRL's lr_power = -0.5)
// read inside its element step would be a branch in the element loop, which
// then does not vectorize. A rule with switches numbers their combinations
// ("forms": kNumForms, Form(params)), and its Step takes the form as a
// template argument: UpdateRow picks the form once per row, so the loop's
// switches are constants; kAnyForm reads them from params instead (the GPU
// kernels, where a branch uniform across threads is free).
constexpr int kAnyForm = -1;

// Switch `bit` of form kForm; under kAnyForm, of `form`, the rule's
// Form(params) (which a fixed kForm makes dead code).
template <int kForm>
GL_HOST_DEVICE inline bool FormSwitch(int bit, int form) {
  return (((kForm == kAnyForm ? form : kForm) >> bit) & 1) != 0;
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

// Range of a hyperparameter, checked before any write (checks.h).
enum class Range {
  kUnit,         // in [0, 1]
  kUnitOpen,     // in [0, 1)
  kNonNegative,  // finite and >= 0
  kNonPositive,  // finite and <= 0
};

struct HyperSpec {
  const char* name;  // the op input's name
  Range range;
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

// The defaults of a rule's declarations; a rule overrides what differs.
struct RuleDefaults : LrScaledStrengths {
  static constexpr const char* kFlag = nullptr;  // name of the bool op attr
  static constexpr bool kFreshRows = true;       // p_old = 0 on a fresh row
  static constexpr bool kUsesHessian = false;    // reads a Hessian estimate
  static constexpr bool kNeedsPositiveLr = false;
  static constexpr int kNumForms = 1;  // combinations of per-step switches
  template <typename P>
  GL_HOST_DEVICE static int Form(const P&) {
    return 0;
  }
};

// `hyper` points at the rule's hyperparameter values, in kHyper order;
// `flag` is the value of the op attribute kFlag (false without one).

// Group Adam.
struct AdamRule : RuleDefaults {
  static constexpr const char* kName = "adam";
  static constexpr const char* kOpName = "GroupAdam";
  static constexpr const char* kSlotNames[] = {"m", "v", "linear"};
  static constexpr HyperSpec kHyper[] = {
      {"beta1_power", Range::kUnitOpen}, {"beta2_power", Range::kUnitOpen},
      {"beta1", Range::kUnit}, {"beta2", Range::kUnit}, {"epsilon", Range::kNonNegative}};
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = sizeof(kHyper) / sizeof(kHyper[0]);
  template <typename T>
  struct Params {
    T alpha;  // lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    T one_minus_beta1, one_minus_beta2, epsilon;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool) {
    return {lr * Sqrt(T(1) - hyper[1]) / (T(1) - hyper[0]), T(1) - hyper[2],
            T(1) - hyper[3], hyper[4]};
  }
  // The two moments, written as Keras writes them (m += (g - m)(1 - b1)) so
  // that zero strengths reproduce keras.optimizers.Adam to the last bits.
  template <typename T>
  GL_HOST_DEVICE static void UpdateMoments(const Params<T>& p, T g, T* m,
                                           T* v) {
    *m += (g - *m) * p.one_minus_beta1;
    *v += (g * g - *v) * p.one_minus_beta2;
  }
  template <int kForm, typename T>
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

// Group AMSGrad: Adam whose preconditioner reads the running maximum vhat of
// the second moment.
struct AMSGradRule : RuleDefaults {
  static constexpr const char* kName = "amsgrad";
  static constexpr const char* kOpName = "GroupAMSGrad";
  static constexpr const char* kSlotNames[] = {"m", "v", "vhat", "linear"};
  static constexpr const HyperSpec* kHyper = AdamRule::kHyper;
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = AdamRule::kNumHyper;
  template <typename T>
  using Params = AdamRule::Params<T>;
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool flag) {
    return AdamRule::MakeParams(lr, hyper, flag);
  }
  template <int kForm, typename T>
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
// moment averages the squared Hessian-diagonal estimate instead of g^2, with
// a Hessian power k:
//
//   m' = b1 m + (1 - b1) g;   v' = b2 v + (1 - b2) hess^2
//   a  = lr (1 - b2^t)^(k/2) / (1 - b1^t) m';   p = v^(k/2) + epsilon
struct AdaHessianRule : RuleDefaults {
  static constexpr const char* kName = "adahessian";
  static constexpr const char* kOpName = "GroupAdaHessian";
  static constexpr const char* kSlotNames[] = {"m", "v", "linear"};
  static constexpr HyperSpec kHyper[] = {
      {"beta1_power", Range::kUnitOpen}, {"beta2_power", Range::kUnitOpen},
      {"beta1", Range::kUnit}, {"beta2", Range::kUnit}, {"epsilon", Range::kNonNegative},
      {"hessian_power", Range::kUnit}};
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = sizeof(kHyper) / sizeof(kHyper[0]);
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
    return HalfPower(v, half_power, half_power == T(0.5));
  }
  template <typename T>
  GL_HOST_DEVICE static T HalfPower(T v, T half_power, bool is_sqrt) {
    return is_sqrt ? Sqrt(v) : Pow(v, half_power);
  }
  // Form 1: hessian_power = 1, a square root.
  static constexpr int kNumForms = 2;
  template <typename T>
  GL_HOST_DEVICE static int Form(const Params<T>& p) {
    return p.half_power == T(0.5) ? 1 : 0;
  }
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool) {
    const T half_power = hyper[5] / T(2);
    return {lr * HalfPower(T(1) - hyper[1], half_power) / (T(1) - hyper[0]),
            T(1) - hyper[2], T(1) - hyper[3], hyper[4], half_power};
  }
  template <int kForm, typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T hess, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T m = slot.row[0][j];
    T v = slot.row[1][j];
    const bool is_sqrt = FormSwitch<kForm>(0, Form(p));
    const T p_old = HalfPower(v, p.half_power, is_sqrt) + p.epsilon;
    m += (g - m) * p.one_minus_beta1;
    v += (hess * hess - v) * p.one_minus_beta2;
    slot.row[0][j] = m;
    slot.row[1][j] = v;
    return {p.alpha * m, p_old, HalfPower(v, p.half_power, is_sqrt) + p.epsilon};
  }
};

// Group Adagrad.
struct AdagradRule : RuleDefaults {
  static constexpr const char* kName = "adagrad";
  static constexpr const char* kOpName = "GroupAdagrad";
  static constexpr const char* kSlotNames[] = {"accumulator", "linear"};
  static constexpr HyperSpec kHyper[] = {{"epsilon", Range::kNonNegative}};
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = sizeof(kHyper) / sizeof(kHyper[0]);
  template <typename T>
  struct Params {
    T lr, epsilon;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool) {
    return {lr, hyper[0]};
  }
  template <int kForm, typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T acc = slot.row[0][j];
    const T p_old = Sqrt(acc + p.epsilon);
    acc += g * g;
    slot.row[0][j] = acc;
    return {p.lr * g, p_old, Sqrt(acc + p.epsilon)};
  }
};

// Group Momentum (SGD with heavy-ball or Nesterov momentum); the op
// attribute use_nesterov selects Nesterov's form.
struct MomentumRule : RuleDefaults {
  static constexpr const char* kName = "momentum";
  static constexpr const char* kOpName = "GroupMomentum";
  static constexpr const char* kSlotNames[] = {"m", "linear"};
  static constexpr HyperSpec kHyper[] = {{"momentum", Range::kUnit}};
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = sizeof(kHyper) / sizeof(kHyper[0]);
  static constexpr const char* kFlag = "use_nesterov";
  template <typename T>
  struct Params {
    T lr, momentum;
    bool nesterov;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool nesterov) {
    return {lr, hyper[0], nesterov};
  }
  // Form 1: Nesterov.
  static constexpr int kNumForms = 2;
  template <typename T>
  GL_HOST_DEVICE static int Form(const Params<T>& p) {
    return p.nesterov ? 1 : 0;
  }
  template <int kForm, typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    // Keras's SGD: m' = mu m - lr g; x += m' (or mu m' - lr g with Nesterov).
    const T m = p.momentum * slot.row[0][j] - p.lr * g;
    slot.row[0][j] = m;
    const T step = FormSwitch<kForm>(0, Form(p)) ? p.momentum * m - p.lr * g : m;
    return {-step, T(1), T(1)};
  }
};

// Group FTRL: Keras's Ftrl plus l21, in Keras's own units (the linear slot
// is not scaled by the learning rate, so neither are the thresholds), and no
// fresh-row rule.
struct FtrlRule : RuleDefaults {
  static constexpr const char* kName = "ftrl";
  static constexpr const char* kOpName = "GroupFtrl";
  static constexpr const char* kSlotNames[] = {"accumulator", "linear"};
  static constexpr HyperSpec kHyper[] = {{"l2_shrinkage", Range::kNonNegative},
                                         {"beta", Range::kNonNegative},
                                         {"lr_power", Range::kNonPositive}};
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = sizeof(kHyper) / sizeof(kHyper[0]);
  static constexpr bool kFreshRows = false;
  static constexpr bool kNeedsPositiveLr = true;  // p divides by lr
  template <typename T>
  struct Params {
    T lr, two_l2_shrinkage, lr_power;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool) {
    return {lr, T(2) * hyper[0], hyper[2]};
  }
  // Form 1: lr_power = -0.5, a square root.
  static constexpr int kNumForms = 2;
  template <typename T>
  GL_HOST_DEVICE static int Form(const Params<T>& p) {
    return p.lr_power == T(-0.5) ? 1 : 0;
  }
  // The beta term joins l2 in the denominator: 2 (l2 + beta / (2 lr)).
  template <typename T>
  GL_HOST_DEVICE static Thresholds<T> MakeThresholds(T lr, T l1, T l21, T l2,
                                                     const T* hyper, int64_t d) {
    return {l1, l21 * Sqrt(static_cast<T>(d)), T(2) * l2 + hyper[1] / lr};
  }
  template <int kForm, typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T x,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T acc = slot.row[0][j];
    const bool is_sqrt = FormSwitch<kForm>(0, Form(p));
    const T p_old = PowNeg(acc, p.lr_power, is_sqrt) / p.lr;
    acc += g * g;
    slot.row[0][j] = acc;
    return {g + p.two_l2_shrinkage * x, p_old, PowNeg(acc, p.lr_power, is_sqrt) / p.lr};
  }
};

// Group RMSprop (Keras's RMSprop): v' = rho v + (1 - rho) g^2 and, centered,
// average_gradient' = rho average_gradient + (1 - rho) g; p = sqrt(v + eps),
// or sqrt(v - average_gradient^2 + eps) centered. Without momentum a = lr g;
// with it the buffer m' = mu m + lr g / p_new is the plain step, so
// a = p_new m' (then x - a / p_new = x - m', Keras's update).
struct RMSpropRule : RuleDefaults {
  static constexpr const char* kName = "rmsprop";
  static constexpr const char* kOpName = "GroupRMSprop";
  static constexpr const char* kSlotNames[] = {"m", "v", "average_gradient", "linear"};
  static constexpr HyperSpec kHyper[] = {
      {"rho", Range::kUnit}, {"momentum", Range::kUnit}, {"epsilon", Range::kNonNegative}};
  static constexpr int kNumSlots = sizeof(kSlotNames) / sizeof(kSlotNames[0]);
  static constexpr int kNumHyper = sizeof(kHyper) / sizeof(kHyper[0]);
  static constexpr const char* kFlag = "centered";
  template <typename T>
  struct Params {
    T lr, rho, one_minus_rho, momentum, epsilon;
    bool centered;
  };
  template <typename T>
  GL_HOST_DEVICE static Params<T> MakeParams(T lr, const T* hyper, bool centered) {
    return {lr, hyper[0], T(1) - hyper[0], hyper[1], hyper[2], centered};
  }
  template <typename T>
  GL_HOST_DEVICE static T Preconditioner(const Params<T>& p, bool centered, T v,
                                        T average_gradient) {
    return Sqrt(centered ? v - average_gradient * average_gradient + p.epsilon
                         : v + p.epsilon);
  }
  // Form bits: 1 centered, 2 with momentum.
  static constexpr int kNumForms = 4;
  template <typename T>
  GL_HOST_DEVICE static int Form(const Params<T>& p) {
    return (p.centered ? 1 : 0) | (p.momentum > T(0) ? 2 : 0);
  }
  template <int kForm, typename T>
  GL_HOST_DEVICE static ElementStep<T> Step(const Params<T>& p, T g, T, T,
                                            SlotRows<T, kNumSlots> slot, int64_t j) {
    T m = slot.row[0][j];
    T v = slot.row[1][j];
    T average_gradient = slot.row[2][j];
    const bool centered = FormSwitch<kForm>(0, Form(p));
    const bool with_momentum = FormSwitch<kForm>(1, Form(p));
    const T p_old = Preconditioner(p, centered, v, average_gradient);
    // As Keras writes them, so that zero strengths reproduce its bits.
    v = p.rho * v + p.one_minus_rho * (g * g);
    if (centered) average_gradient = p.rho * average_gradient + p.one_minus_rho * g;
    const T p_new = Preconditioner(p, centered, v, average_gradient);
    if (with_momentum) m = p.momentum * m + p.lr * g / p_new;
    slot.row[0][j] = m;
    slot.row[1][j] = v;
    slot.row[2][j] = average_gradient;
    return {with_momentum ? p_new * m : p.lr * g, p_old, p_new};
  }
};

// ---------------------------------------------------------------- the table
// Every rule, once. X(Rule) is expanded for op and kernel registration (CPU
// and GPU), the GPU functors and the pybind11 module.
#define GROUP_LASSO_RULES(X) \
  X(AdamRule)                \
  X(AMSGradRule)             \
  X(AdaHessianRule)          \
  X(AdagradRule)             \
  X(MomentumRule)            \
  X(FtrlRule)                \
  X(RMSpropRule)

// The inputs of a rule's ops, in order: var, the slots (linear last), with
// kStored the stored Hessian estimate, lr, l1, l21, l2, the rule's
// hyperparameters, grad, for rules with kUsesHessian the Hessian-diagonal
// estimate `hessian` (the shape of grad), with kStored the boolean scalar
// `estimate`, and for the sparse ops `indices`. Op registration and the
// kernels both read their positions from here.
template <typename Rule, bool kSparse, bool kStored>
struct OpLayout {
  static constexpr int kNumVars = 1 + Rule::kNumSlots + (kStored ? 1 : 0);
  static constexpr int kNumScalars = 4 + Rule::kNumHyper;
  static constexpr int kGradInput = kNumVars + kNumScalars;
  static constexpr int kHessianInput = kGradInput + 1;      // if kUsesHessian
  static constexpr int kEstimateInput = kHessianInput + 1;  // if kStored
  static constexpr int kIndicesInput =
      kGradInput + (Rule::kUsesHessian ? 2 : 1) + (kStored ? 1 : 0);
  static constexpr int kNumInputs = kIndicesInput + (kSparse ? 1 : 0);
  static_assert(!kStored || Rule::kUsesHessian, "a stored estimate needs a Hessian rule");
};

namespace internal {
constexpr bool SameName(const char* a, const char* b) {
  return *a == *b && (*a == '\0' || SameName(a + 1, b + 1));
}
// Input names of every op besides the rule's own (OpLayout).
constexpr const char* kCommonInputs[] = {"var", "lr", "l1", "l21", "l2", "grad", "hessian",
                                         "hessian_estimate", "estimate", "indices"};
constexpr bool IsCommonInput(const char* name) {
  for (const char* common : kCommonInputs) {
    if (SameName(name, common)) return true;
  }
  return false;
}
// The rule's input names: none common, none twice, the linear slot last.
template <typename Rule>
constexpr bool NamesAreValid() {
  if (!SameName(Rule::kSlotNames[Rule::kNumSlots - 1], "linear")) return false;
  for (int i = 0; i < Rule::kNumSlots + Rule::kNumHyper; ++i) {
    const char* a = i < Rule::kNumSlots ? Rule::kSlotNames[i]
                                        : Rule::kHyper[i - Rule::kNumSlots].name;
    if (IsCommonInput(a)) return false;
    for (int k = 0; k < i; ++k) {
      const char* b = k < Rule::kNumSlots ? Rule::kSlotNames[k]
                                          : Rule::kHyper[k - Rule::kNumSlots].name;
      if (SameName(a, b)) return false;
    }
  }
  return true;
}
}  // namespace internal

// Each rule of the table: its declarations are complete and its names
// usable as op inputs; the op layout has one input per slot and per
// hyperparameter.
#define GL_CHECK_RULE(RULE)                                                          \
  static_assert(RULE::kNumSlots >= 2 && RULE::kNumHyper >= 1, #RULE ": slot/hyper counts"); \
  static_assert(internal::NamesAreValid<RULE>(),                                     \
                #RULE ": slot and hyperparameter names must be distinct op input "   \
                "names, the linear slot last");                                      \
  static_assert(OpLayout<RULE, true, false>::kNumInputs ==                           \
                    1 + RULE::kNumSlots + 4 + RULE::kNumHyper + 1 +                  \
                        (RULE::kUsesHessian ? 1 : 0) + 1,                            \
                #RULE ": op layout");
GROUP_LASSO_RULES(GL_CHECK_RULE)
#undef GL_CHECK_RULE

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_RULES_H_
