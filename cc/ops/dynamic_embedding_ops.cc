// Ops of the dynamic embedding table's key index (cc/group_lasso/dynamic_index.h,
// docs/dynamic_embedding.md). The index lives in five int64 resource
// variables, all zero when empty:
//
//   key_table  [table_size, 2]    key -> pool row (open addressing)
//   row_state  [capacity, 3]      per pool row: key, last seen, stale slots
//   free_rows  [capacity]         stack of released rows
//   pending    [pending_size, 2]  sightings of keys not admitted yet
//   stats      [8]                counters (dynamic_index.h, Stat)
//
// Every op locks them, checks every input, and only then writes.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace group_lasso_tf {

using ::tensorflow::shape_inference::InferenceContext;

#define GL_INDEX_INPUTS                 \
  Input("key_table: resource")          \
      .Input("row_state: resource")     \
      .Input("free_rows: resource")     \
      .Input("pending: resource")       \
      .Input("stats: resource")

REGISTER_OP("GroupLassoDynamicLookup")
    .GL_INDEX_INPUTS
    .Input("ids: int64")
    .Output("pool_rows: int64")
    .Output("fresh: bool")
    .Attr("min_count: int >= 1 = 1")
    .Attr("on_full: {'drop', 'evict_lru'} = 'drop'")
    .Attr("training: bool = true")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(5));
      c->set_output(1, c->input(5));
      return ::tensorflow::OkStatus();
    })
    .Doc("The pool row of each id (capacity, the shared zero row, for ids not "
         "admitted), admitting unseen keys after min_count sightings; `fresh` "
         "marks the positions whose key took a row in this call. With "
         "training false (inference) nothing is admitted or changed.");

REGISTER_OP("GroupLassoDynamicClearStale")
    .GL_INDEX_INPUTS
    .Input("slots: N * resource")
    .Input("indices: Tindices")
    .Attr("N: int >= 0")
    .Attr("T: {float, double}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](InferenceContext*) { return ::tensorflow::OkStatus(); })
    .Doc("Zeroes the rows of `slots` among `indices` that eviction gave to a "
         "new key (before the optimizer updates them).");

REGISTER_OP("GroupLassoDynamicRelease")
    .GL_INDEX_INPUTS
    .Input("var: resource")
    .Input("slots: N * resource")
    .Input("indices: Tindices")
    .Output("released: int64")
    .Attr("N: int >= 0")
    .Attr("T: {float, double}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      return ::tensorflow::OkStatus();
    })
    .Doc("Frees every live row among `indices` that `var` holds exactly zero: "
         "its key leaves the index, its slot rows are zeroed, the row is free.");

REGISTER_OP("GroupLassoDynamicShard")
    .Input("ids: int64")
    .Output("shards: int32")
    .Attr("num_shards: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc("The shard in [0, num_shards) of each id of a table sharded by key: from "
         "the high bits of the index's hash (dynamic_index.h, ShardOf), so that "
         "sequential ids and ids sharing low bits spread evenly, and independently "
         "of the slot each shard's index gives them (the low bits).");

REGISTER_OP("GroupLassoDynamicWriteRows")
    .Input("var: resource")
    .Input("rows: int64")
    .Input("values: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext*) { return ::tensorflow::OkStatus(); })
    .Doc("Writes values[i] into row rows[i] of var, in place (the initial values of "
         "admitted rows). Unlike ResourceScatterUpdate it never switches the variable "
         "to copy-on-read, and copies its buffer only while an older read holds it.");

#undef GL_INDEX_INPUTS

}  // namespace group_lasso_tf
