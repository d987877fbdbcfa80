// Host-side drivers of the row step: dense (every row) and sparse (the rows
// named by a list of ids, duplicates summed). Framework-free: the TensorFlow
// CPU kernels pass TensorFlow's intra-op thread pool as `parallel_for`, the
// pybind11 module a serial loop.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_APPLY_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_APPLY_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "group_lasso/prox.h"

namespace group_lasso {

// Everything a row step needs besides the row itself.
template <typename Rule, typename T>
struct StepConfig {
  typename Rule::template Params<T> params;
  Thresholds<T> thresholds;
};

template <typename Rule, typename T>
StepConfig<Rule, T> MakeStepConfig(T lr, T l1, T l21, T l2, const T* hyper,
                                   bool flag, int64_t d) {
  return {Rule::MakeParams(lr, hyper, flag),
          Rule::MakeThresholds(lr, l1, l21, l2, hyper, d)};
}

// AdaHessian's stored estimate (update_every > 1): a variable-shaped array
// of the last Hessian-diagonal estimate per row. On an estimating step the
// fresh estimate of each updated row is written to it; on other steps the
// row's stored estimate is used instead, or |g| for a row that has none yet
// (all zero), the empirical-Fisher diagonal that Adam uses.
template <typename T>
struct HessianStore {
  T* rows = nullptr;  // null: no store, the given estimate is used as is
  bool estimate = true;
};

// The estimate a row step uses (see HessianStore); `scratch` holds |g| when
// that is the answer. Returns `hess` itself when there is no store.
template <typename T>
const T* StoredHessianRow(const HessianStore<T>& store, int64_t row, int64_t d,
                          const T* g, const T* hess, std::vector<T>* scratch) {
  if (store.rows == nullptr) return hess;
  T* stored = store.rows + row * d;
  if (store.estimate) {
    std::copy(hess, hess + d, stored);
    return hess;
  }
  for (int64_t j = 0; j < d; ++j) {
    if (stored[j] != T(0)) return stored;
  }
  scratch->resize(d);
  for (int64_t j = 0; j < d; ++j) (*scratch)[j] = g[j] < T(0) ? -g[j] : g[j];
  return scratch->data();
}

// Rough cost of one row step in cycles, for TensorFlow's work sharder.
template <typename Rule>
int64_t RowCost(int64_t d) {
  return d * (8 * (Rule::kNumSlots + 2) + 40) + 50;
}

// Position of the first id outside [0, num_rows), or -1 if all are valid.
template <typename Tindex>
int64_t FirstOutOfRange(const Tindex* ids, int64_t n, int64_t num_rows) {
  for (int64_t i = 0; i < n; ++i) {
    // One unsigned comparison catches negative ids too.
    if (static_cast<uint64_t>(static_cast<int64_t>(ids[i])) >=
        static_cast<uint64_t>(num_rows)) {
      return i;
    }
  }
  return -1;
}

// Dense step: every row of a [num_rows, d] variable. `hess` has the
// layout of `grad` (read only if Rule::kUsesHessian).
template <typename Rule, typename T, typename ParallelFor>
void ApplyDense(const StepConfig<Rule, T>& config, int64_t num_rows, int64_t d,
                T* var, T* const* slots, const T* grad, const T* hess,
                ParallelFor&& parallel_for,
                const HessianStore<T>& store = HessianStore<T>()) {
  parallel_for(num_rows, RowCost<Rule>(d), [&](int64_t begin, int64_t end) {
    T* row_slots[Rule::kNumSlots];
    std::vector<T> scratch;
    for (int64_t r = begin; r < end; ++r) {
      for (int k = 0; k < Rule::kNumSlots; ++k) row_slots[k] = slots[k] + r * d;
      const T* g = grad + r * d;
      const T* hess_row = Rule::kUsesHessian
                              ? StoredHessianRow(store, r, d, g, hess + r * d, &scratch)
                              : nullptr;
      UpdateRow<Rule>(config.params, config.thresholds, d, var + r * d,
                      row_slots, g, hess_row);
    }
  });
}

// Asks for the cache lines of row `row` of var and its slots (d values of T
// each): a sparse step's rows are scattered over arrays far larger than the
// caches, and the row step is long enough that the processor does not reach
// the next row's loads by itself.
template <int kNumSlots, typename T>
inline void PrefetchRow(const T* var, T* const* slots, int64_t row, int64_t d) {
  const int64_t first = row * d;
  const int64_t last = first + d - 1;
  __builtin_prefetch(var + first, 1);
  __builtin_prefetch(var + last, 1);
  for (int k = 0; k < kNumSlots; ++k) {
    __builtin_prefetch(slots[k] + first, 1);
    __builtin_prefetch(slots[k] + last, 1);
  }
}

// How many rows ahead a sparse step prefetches.
constexpr int64_t kPrefetchRows = 4;

// The distinct ids of a batch in order of first appearance, each with the
// sum of its gradient rows (d values each, row u at values[u * d]) and, when
// a Hessian estimate was given, the sum of its estimate rows (likewise in
// `hess`; empty otherwise).
template <typename T, typename Tindex>
struct SummedRows {
  std::vector<Tindex> ids;
  std::vector<T> values;
  std::vector<T> hess;
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

// Fibonacci hashing: the top bits of id * 2^64 / golden ratio spread
// consecutive and strided ids alike.
template <typename Tindex>
inline uint64_t HashId(Tindex id) {
  return static_cast<uint64_t>(static_cast<int64_t>(id)) * uint64_t{0x9E3779B97F4A7C15};
}

// Splits a hash between `parts` parts (parts < 2^32): the part is the hash's
// top 32 bits scaled to [0, parts), and `rest` the hash with that choice
// taken out (the scaled fraction's low bits), so that within a part the
// table's slots are still drawn from the top bits of a uniform hash. With
// one part, rest is the hash itself.
struct PartOfHash {
  uint64_t part;
  uint64_t rest;
};
inline PartOfHash SplitHash(uint64_t h, uint64_t parts) {
  const uint64_t scaled = (h >> 32) * parts;
  return {scaled >> 32, (scaled << 32) | (h & 0xFFFFFFFFu)};
}

// Groups the ids of part `part` of `parts` (SplitHash) of a batch and sums
// their gradient rows (and their Hessian estimate rows, if `hess` is not
// null) in one pass: an open-addressing hash table (linear probing, at most
// half full, doubled when it would not be) maps an id to its distinct row,
// whose sum starts as the id's first gradient row and adds the others as
// they come. Positions are visited in batch order, so each sum adds its
// terms in a fixed order, whatever the number of parts: a step does not
// depend on the thread count. Parts split the distinct ids of one large
// batch between threads, each reading every id but summing only its own.
// This replaced a radix or counting sort of the ids and a second pass over
// each id's positions (measured on 26 tables of 1,024 Zipf ids, dim 16:
// sort and gather 9-11 ns per id, this 6.5-7.5). Ids must have been
// range-checked. `Row` indexes the distinct rows in the table: int32_t,
// half the cache of int64_t (measured 2% faster with 65,536 ids, 8% with
// 10^6), for any batch of fewer than 2^31 ids (SumDuplicateRows);
// tests/test_sum_duplicates.py runs both on the same batches.
template <typename Row, typename T, typename Tindex>
void SumDuplicateRowsIndexedBy(const Tindex* ids, int64_t n, const T* grad, const T* hess,
                               int64_t d, SummedRows<T, Tindex>* out, int64_t part,
                               int64_t parts) {
  // This part's positions, in batch order. Collected without a branch: with
  // two parts, skipping the other part's ids mispredicts every other id
  // (measured 0.76 ms for 65,536 ids against 0.68 on one thread).
  std::vector<int64_t> mine;
  if (parts > 1) {
    mine.resize(n);
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      mine[count] = i;
      count += static_cast<int64_t>(SplitHash(HashId(ids[i]), parts).part) == part;
    }
    mine.resize(count);
  }
  const int64_t size = parts > 1 ? static_cast<int64_t>(mine.size()) : n;
  int bits = 4;
  while ((int64_t{1} << bits) < size / 4) ++bits;
  std::vector<Row> table(size_t{1} << bits, -1);  // distinct row of an id, or -1
  out->ids.clear();
  out->values.clear();
  out->hess.clear();
  out->ids.reserve(size);
  out->values.reserve(size * d);  // reserved, not filled: every value is written once
  if (hess != nullptr) out->hess.reserve(size * d);
  for (int64_t k = 0; k < size; ++k) {
    const int64_t i = parts > 1 ? mine[k] : k;
    const Tindex id = ids[i];
    const PartOfHash hash = SplitHash(HashId(id), parts);
    const T* g = grad + i * d;
    const uint64_t mask = (uint64_t{1} << bits) - 1;
    for (uint64_t h = hash.rest >> (64 - bits);; h = (h + 1) & mask) {
      const Row u = table[h];
      if (u < 0) {  // first time: the sum starts as this row
        table[h] = static_cast<Row>(out->ids.size());
        out->ids.push_back(id);
        out->values.insert(out->values.end(), g, g + d);
        if (hess != nullptr) out->hess.insert(out->hess.end(), hess + i * d, hess + i * d + d);
        break;
      }
      if (out->ids[u] == id) {
        T* sum = out->values.data() + u * d;
        for (int64_t j = 0; j < d; ++j) sum[j] += g[j];
        if (hess != nullptr) {
          T* hess_sum = out->hess.data() + u * d;
          for (int64_t j = 0; j < d; ++j) hess_sum[j] += hess[i * d + j];
        }
        break;
      }
    }
    if (2 * out->ids.size() > table.size()) {  // a skewed part: twice the slots
      ++bits;
      table.assign(size_t{1} << bits, -1);
      const uint64_t wider = (uint64_t{1} << bits) - 1;
      for (size_t u = 0; u < out->ids.size(); ++u) {
        uint64_t h = SplitHash(HashId(out->ids[u]), parts).rest >> (64 - bits);
        while (table[h] >= 0) h = (h + 1) & wider;
        table[h] = static_cast<Row>(u);
      }
    }
  }
}

template <typename T, typename Tindex>
void SumDuplicateRows(const Tindex* ids, int64_t n, const T* grad, const T* hess, int64_t d,
                      SummedRows<T, Tindex>* out, int64_t part = 0, int64_t parts = 1) {
  if (n < (int64_t{1} << 31)) {
    SumDuplicateRowsIndexedBy<int32_t>(ids, n, grad, hess, d, out, part, parts);
  } else {
    SumDuplicateRowsIndexedBy<int64_t>(ids, n, grad, hess, d, out, part, parts);
  }
}

// One table of a multi-table sparse step: its own configuration (strengths
// and row width) and rows; `rows` from SumDuplicateRows over its
// range-checked ids.
template <typename Rule, typename T, typename Tindex>
struct SparseTable {
  StepConfig<Rule, T> config;
  int64_t d = 0;
  T* var = nullptr;
  T* slots[Rule::kNumSlots] = {};
  HessianStore<T> store;  // rules that read a Hessian estimate only
  SummedRows<T, Tindex> rows;
};

// Rows [begin, end) of one table's summed batch (`table.rows`), each given
// exactly the step ApplySparse gives it. Rows go in first-appearance order,
// not by address: the prefetch ahead, not the order, is what hides their
// cache misses.
template <typename Rule, typename T, typename Tindex>
void UpdateSummedRows(const SparseTable<Rule, T, Tindex>& table, int64_t begin, int64_t end) {
  T* row_slots[Rule::kNumSlots];
  std::vector<T> scratch;  // |g| for a stored-estimate row with no estimate yet
  const int64_t d = table.d;
  for (int64_t u = begin; u < end; ++u) {
    if (u + kPrefetchRows < end) {
      PrefetchRow<Rule::kNumSlots>(table.var, table.slots,
                                   static_cast<int64_t>(table.rows.ids[u + kPrefetchRows]), d);
    }
    const int64_t row = static_cast<int64_t>(table.rows.ids[u]);
    const T* g = table.rows.values.data() + u * d;
    const T* hess_row = nullptr;
    if constexpr (Rule::kUsesHessian) {
      const T* given = table.rows.hess.empty() ? nullptr : table.rows.hess.data() + u * d;
      hess_row = StoredHessianRow(table.store, row, d, g, given, &scratch);
    }
    for (int k = 0; k < Rule::kNumSlots; ++k) row_slots[k] = table.slots[k] + row * d;
    UpdateRow<Rule>(table.config.params, table.config.thresholds, d, table.var + row * d,
                    row_slots, g, hess_row);
  }
}

// Sparse step of several tables in one pass: the distinct rows of all tables
// form one range of work for `parallel_for`, so that a step over many small
// tables keeps every thread busy instead of paying a call per table. Each
// row gets exactly the step ApplySparse gives it (same config, same sum of
// duplicates in position order): results equal table-by-table steps.
template <typename Rule, typename T, typename Tindex, typename ParallelFor>
void ApplySparseTables(const std::vector<SparseTable<Rule, T, Tindex>>& tables,
                       ParallelFor&& parallel_for) {
  std::vector<int64_t> offsets(tables.size() + 1, 0);  // first work item of each table
  int64_t widest = 1;
  for (size_t t = 0; t < tables.size(); ++t) {
    offsets[t + 1] = offsets[t] + tables[t].rows.size();
    widest = std::max(widest, tables[t].d);
  }
  parallel_for(offsets.back(), RowCost<Rule>(widest), [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; begin < end; ++t) {  // the part of [begin, end) in table t
      const int64_t stop = std::min(end, offsets[t + 1]);
      UpdateSummedRows(tables[t], begin - offsets[t], stop - offsets[t]);
      begin = stop;
    }
  });
}

// Ids per part below which a sparse step does not split its batch (see
// ApplySparseIds): a part's fixed cost is a pass over all ids, about 0.5 ns
// each, and a thread's start.
constexpr int64_t kMinIdsPerPart = 2048;

// Sparse step of one variable from a batch of (possibly duplicate) ids,
// range-checked (FirstOutOfRange); gradient row i of `grad` (and of `hess`,
// read only if Rule::kUsesHessian and the step does not reuse a stored
// estimate) belongs to ids[i]. Duplicates are summed, the Hessian estimate
// like the gradient. The batch is split by id hash into up to
// parallel_for.parallelism() parts; each part's duplicates are summed on its
// own thread (SumDuplicateRows) and its distinct rows updated there, while
// their sums are in that core's cache and with no second round of the
// thread pool. A batch of one part spreads its rows over the threads
// instead (ApplySparseTables). Parts own disjoint rows and sum in batch
// order, so results do not depend on their number.
template <typename Rule, typename T, typename Tindex, typename ParallelFor>
void ApplySparseIds(const StepConfig<Rule, T>& config, int64_t d, T* var, T* const* slots,
                    const T* grad, const T* hess, const Tindex* ids, int64_t n,
                    ParallelFor&& parallel_for,
                    const HessianStore<T>& store = HessianStore<T>()) {
  if (n == 0) return;
  // On steps that reuse a stored estimate the given one is not read.
  const bool reuse = store.rows != nullptr && !store.estimate;
  const T* summed_hess = Rule::kUsesHessian && !reuse ? hess : nullptr;
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>(parallel_for.parallelism(), n / kMinIdsPerPart));
  std::vector<SparseTable<Rule, T, Tindex>> tables(parts);
  for (SparseTable<Rule, T, Tindex>& table : tables) {
    table.config = config;
    table.d = d;
    table.var = var;
    std::copy(slots, slots + Rule::kNumSlots, table.slots);
    table.store = store;
  }
  if (parts == 1) {
    SumDuplicateRows(ids, n, grad, summed_hess, d, &tables[0].rows);
    ApplySparseTables(tables, parallel_for);
    return;
  }
  // One shard per part: a cost per part above any threshold of the sharder.
  parallel_for(parts, int64_t{1} << 30, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      SumDuplicateRows(ids, n, grad, summed_hess, d, &tables[p].rows, p, parts);
      UpdateSummedRows(tables[p], 0, tables[p].rows.size());
    }
  });
}

// A parallel_for that runs everything on the calling thread.
struct SerialFor {
  template <typename Fn>
  void operator()(int64_t total, int64_t, Fn&& fn) const {
    if (total > 0) fn(0, total);
  }
  int64_t parallelism() const { return 1; }
};

}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_APPLY_H_
