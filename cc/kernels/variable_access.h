// Locked, copy-on-write access to the resource variables of one training op.
//
// What TensorFlow's training_op_helpers.h does, minus two things this
// project must avoid: (1) it never switches a variable to copy-on-read mode
// (Keras 3's Embedding reads its whole table every step, and in that mode
// every such read copies the table), and (2) it needs nothing from
// libtensorflow_cc.so, only the framework library.
//
// Include after defining EIGEN_USE_THREADS (and EIGEN_USE_GPU in .cu.cc).
#ifndef GROUP_LASSO_TF_CC_KERNELS_VARIABLE_ACCESS_H_
#define GROUP_LASSO_TF_CC_KERNELS_VARIABLE_ACCESS_H_

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/huge_pages.h"

#include "unsupported/Eigen/CXX11/Tensor"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"

namespace group_lasso_tf {

// Copies a tensor's bytes into another of the same shape on the same device:
// a memcpy on the host; the GPU specialization lives in the .cu.cc files.
template <typename Device>
void CopyTensorBuffer(const Device& d, const ::tensorflow::Tensor& from,
                      ::tensorflow::Tensor* to);

template <>
inline void CopyTensorBuffer(const Eigen::ThreadPoolDevice&,
                             const ::tensorflow::Tensor& from,
                             ::tensorflow::Tensor* to) {
  const auto src = from.tensor_data();
  std::memcpy(const_cast<char*>(to->tensor_data().data()), src.data(),
              src.size());
}

#if GOOGLE_CUDA
// An asynchronous device-to-device copy on the op's stream.
template <>
inline void CopyTensorBuffer(const Eigen::GpuDevice& d, const ::tensorflow::Tensor& from,
                             ::tensorflow::Tensor* to) {
  const auto src = from.tensor_data();
  d.memcpy(const_cast<char*>(to->tensor_data().data()), src.data(), src.size());
}
#endif  // GOOGLE_CUDA

template <typename Device>
void AdviseHostBuffer(const ::tensorflow::Tensor& t) {
  if constexpr (std::is_same<Device, Eigen::ThreadPoolDevice>::value) {
    const auto data = t.tensor_data();
    AdviseHugePages(data.data(), data.size());
  }
}

class LockedVariables {
 public:
  // Looks up resource inputs [first, first + count) and locks their mutexes
  // in address order (exclusively with use_locking, shared otherwise), the
  // order every TensorFlow training op uses, so no two ops can deadlock.
  ::tensorflow::Status Acquire(::tensorflow::OpKernelContext* ctx, int first,
                               int count, bool exclusive) {
    std::vector<const ::tensorflow::ResourceHandle*> handles;
    for (int i = 0; i < count; ++i) {
      handles.push_back(&::tensorflow::HandleFromInput(ctx, first + i));
    }
    return Acquire(ctx, handles, exclusive, [ctx, first](int i) {
      return "input " + ctx->op_kernel().requested_input(first + i);
    });
  }

  // The same for handles from anywhere (a stacked handle tensor's elements);
  // `describe(i)` names handle i in an error.
  template <typename Describe>
  ::tensorflow::Status Acquire(::tensorflow::OpKernelContext* ctx,
                               const std::vector<const ::tensorflow::ResourceHandle*>& handles,
                               bool exclusive, Describe&& describe) {
    exclusive_ = exclusive;
    const int count = static_cast<int>(handles.size());
    vars_.resize(count);
    for (int i = 0; i < count; ++i) {
      ::tensorflow::Status s = ::tensorflow::LookupResource(ctx, *handles[i], &vars_[i]);
      if (!s.ok()) {
        return ::tensorflow::errors::FailedPrecondition(
            describe(i), " is not an initialized resource variable: ", s.message());
      }
      mutexes_.push_back(vars_[i]->mu());
    }
    std::sort(mutexes_.begin(), mutexes_.end());
    mutexes_.erase(std::unique(mutexes_.begin(), mutexes_.end()),
                   mutexes_.end());
    for (::tensorflow::mutex* mu : mutexes_) {
      if (exclusive_) {
        mu->lock();
      } else {
        mu->lock_shared();
      }
    }
    locked_ = true;
    return ::tensorflow::OkStatus();
  }

  ~LockedVariables() {
    if (!locked_) return;
    for (auto it = mutexes_.rbegin(); it != mutexes_.rend(); ++it) {
      if (exclusive_) {
        (*it)->unlock();
      } else {
        (*it)->unlock_shared();
      }
    }
  }

  int size() const { return static_cast<int>(vars_.size()); }
  ::tensorflow::Var* var(int i) { return vars_[i].get(); }
  ::tensorflow::Tensor* tensor(int i) { return vars_[i]->tensor(); }

  // Gives variable i a buffer of its own before it is written: a tensor read
  // earlier (a pending `read_value`, an identity, a dataset element) still
  // holds the old buffer and must not see the update. A large host buffer
  // is also offered huge pages (huge_pages.h).
  template <typename Device>
  ::tensorflow::Status CopyOnWrite(::tensorflow::OpKernelContext* ctx, int i) {
    ::tensorflow::Tensor* t = vars_[i]->tensor();
    if (!t->RefCountIsOne()) {
      ::tensorflow::Tensor copy;
      ::tensorflow::AllocatorAttributes attr;
      attr.set_gpu_compatible(true);
      attr.set_nic_compatible(true);
      TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &copy, attr));
      CopyTensorBuffer(ctx->eigen_device<Device>(), *t, &copy);
      *t = copy;
    }
    AdviseHostBuffer<Device>(*t);
    return ::tensorflow::OkStatus();
  }

 private:
  std::vector<::tensorflow::core::RefCountPtr<::tensorflow::Var>> vars_;
  std::vector<::tensorflow::mutex*> mutexes_;
  bool exclusive_ = true;
  bool locked_ = false;
};

}  // namespace group_lasso_tf

#endif  // GROUP_LASSO_TF_CC_KERNELS_VARIABLE_ACCESS_H_
