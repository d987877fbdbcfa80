// Names of the ops that cc/ops/group_lasso_ops.cc registers from the rule
// table, for the kernel registrations (cc/kernels/).
#ifndef GROUP_LASSO_TF_CC_OPS_GROUP_LASSO_OPS_H_
#define GROUP_LASSO_TF_CC_OPS_GROUP_LASSO_OPS_H_

#include <string>

namespace group_lasso_tf {

// ResourceApply<op_name> or ResourceSparseApply<op_name>, with the suffix
// "Stored" for the stored-Hessian-estimate variant.
std::string ApplyOpName(const char* op_name, bool sparse, bool stored);

// ResourceSparseApply<op_name>Multi: the sparse step of N tables in one op
// (rules that read no Hessian).
std::string MultiApplyOpName(const char* op_name);

}  // namespace group_lasso_tf

#endif  // GROUP_LASSO_TF_CC_OPS_GROUP_LASSO_OPS_H_
