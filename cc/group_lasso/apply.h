// Host-side drivers of the row step: dense (every row) and sparse (the rows
// named by a list of ids, duplicates summed). Framework-free: the TensorFlow
// CPU kernels pass TensorFlow's intra-op thread pool as `parallel_for`, the
// pybind11 module a serial loop.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_APPLY_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_APPLY_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
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

// The distinct ids of a batch and, for each, the positions of its gradient
// rows (CSR layout: positions[starts[u] .. starts[u+1]) belong to ids[u]).
// Positions keep their original order, so duplicate sums are deterministic.
template <typename Tindex>
struct IdGroups {
  std::vector<Tindex> ids;
  std::vector<int64_t> starts;
  std::vector<int64_t> positions;
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

// An id of a batch (as id - min(id)) and its position in the batch.
struct IdPosition {
  uint64_t key;  // id - min(id)
  int64_t position;
};

// Stable LSD radix sort of keys in [0, key_range]: as few passes as digits
// of at most 12 bits allow (at most log2(n) bits, 8 at least, so that a small
// batch does not pay for counters it leaves empty), each digit as wide as
// that number of passes needs. Measured (GroupIds, best of 5 x 200 runs,
// Zipf ids spread over the rows) against the fixed 8- or 16-bit digits it
// replaces: 1,024 / 4,096 / 16,384 ids over 10^6 rows 0.017 / 0.071 / 0.302
// ms -> 0.014 / 0.055 / 0.233; 65,536 ids over 10^5 / 10^6 / 10^7 rows
// 0.70 / 0.94 / 1.00 -> 0.70 / 0.89 / 0.95 ms.
inline void RadixSortIdPositions(std::vector<IdPosition>* pairs, uint64_t key_range) {
  int key_bits = 1;
  while (key_bits < 64 && (key_range >> key_bits) != 0) ++key_bits;
  int max_digit = 8;
  while (max_digit < 12 && (pairs->size() >> (max_digit + 1)) != 0) ++max_digit;
  const int passes = (key_bits + max_digit - 1) / max_digit;
  const int digit = (key_bits + passes - 1) / passes;
  const uint64_t mask = (uint64_t{1} << digit) - 1;
  std::vector<IdPosition> buffer(pairs->size());
  std::vector<size_t> count(mask + 2);
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * digit;
    std::fill(count.begin(), count.end(), 0);
    for (const IdPosition& p : *pairs) ++count[((p.key >> shift) & mask) + 1];
    for (uint64_t k = 0; k <= mask; ++k) count[k + 1] += count[k];
    for (const IdPosition& p : *pairs) buffer[count[(p.key >> shift) & mask]++] = p;
    pairs->swap(buffer);
  }
}

// Sorts (id, position) pairs by id, positions ascending within an id: the
// order every path must give (it fixes the order duplicates are summed in).
// Keys in a range not much larger than the batch (small tables, the common
// case of a step over many tables) take one counting pass; other batches of
// 64 ids or more the radix sort above (two or three passes over at most
// 4,096 counters instead of n log n comparisons).
inline void SortIdPositions(std::vector<IdPosition>* pairs, uint64_t key_range) {
  const uint64_t n = pairs->size();
  if (n < 64) {
    std::sort(pairs->begin(), pairs->end(), [](const IdPosition& a, const IdPosition& b) {
      return a.key < b.key || (a.key == b.key && a.position < b.position);
    });
    return;
  }
  if (key_range < 4 * n + 4096) {  // one counting pass over [0, key_range]
    std::vector<size_t> count(key_range + 2, 0);
    for (const IdPosition& p : *pairs) ++count[p.key + 1];
    for (uint64_t k = 0; k <= key_range; ++k) count[k + 1] += count[k];
    std::vector<IdPosition> buffer(n);
    for (const IdPosition& p : *pairs) buffer[count[p.key]++] = p;
    pairs->swap(buffer);
    return;
  }
  RadixSortIdPositions(pairs, key_range);
}

template <typename Tindex>
IdGroups<Tindex> GroupIds(const Tindex* ids, int64_t n) {
  IdGroups<Tindex> groups;
  if (n == 0) {
    groups.starts.push_back(0);
    return groups;
  }
  const Tindex min_id = *std::min_element(ids, ids + n);
  const Tindex max_id = *std::max_element(ids, ids + n);
  // Sorting by id also gives rows in increasing address order, which helps
  // the cache and the hardware prefetcher when the rows are updated.
  std::vector<IdPosition> pairs(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t offset = static_cast<int64_t>(ids[i]) - static_cast<int64_t>(min_id);
    pairs[i] = {static_cast<uint64_t>(offset), i};
  }
  SortIdPositions(&pairs, static_cast<uint64_t>(static_cast<int64_t>(max_id) -
                                                static_cast<int64_t>(min_id)));
  groups.positions.resize(n);
  groups.starts.reserve(n + 1);
  for (int64_t k = 0; k < n; ++k) {
    groups.positions[k] = pairs[k].position;
    if (k == 0 || pairs[k].key != pairs[k - 1].key) {
      groups.ids.push_back(ids[pairs[k].position]);
      groups.starts.push_back(k);
    }
  }
  groups.starts.push_back(n);
  return groups;
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

// Row u of a sparse batch (`values` holds one row of d per position): the
// row of its only position, or the sum of its duplicates in `*summed`.
template <typename T, typename Tindex>
const T* GroupRow(const IdGroups<Tindex>& groups, int64_t u, int64_t d,
                  const T* values, std::vector<T>* summed) {
  const int64_t first = groups.starts[u];
  const int64_t last = groups.starts[u + 1];
  const T* row = values + groups.positions[first] * d;
  if (last - first == 1) return row;
  summed->assign(row, row + d);
  for (int64_t k = first + 1; k < last; ++k) {
    const T* rk = values + groups.positions[k] * d;
    for (int64_t j = 0; j < d; ++j) (*summed)[j] += rk[j];
  }
  return summed->data();
}

// Sparse step: the rows named in `groups`; gradient row i of `grad` (and of
// `hess`, read only if Rule::kUsesHessian) belongs to id ids[i]. Duplicates
// are summed, the Hessian estimate like the gradient: both are sums over the
// positions of a row. Ids must have been range-checked (FirstOutOfRange).
template <typename Rule, typename T, typename Tindex, typename ParallelFor>
void ApplySparse(const StepConfig<Rule, T>& config, int64_t d, T* var,
                 T* const* slots, const T* grad, const T* hess,
                 const IdGroups<Tindex>& groups, ParallelFor&& parallel_for,
                 const HessianStore<T>& store = HessianStore<T>()) {
  parallel_for(groups.size(), RowCost<Rule>(d), [&](int64_t begin,
                                                    int64_t end) {
    T* row_slots[Rule::kNumSlots];
    // Only allocated when a shard meets a duplicate (or a stored-estimate
    // row with no estimate yet).
    std::vector<T> summed_grad, summed_hess, scratch;
    for (int64_t u = begin; u < end; ++u) {
      if (u + kPrefetchRows < end) {
        const int64_t ahead = static_cast<int64_t>(groups.ids[u + kPrefetchRows]);
        PrefetchRow<Rule::kNumSlots>(var, slots, ahead, d);
      }
      const int64_t row = static_cast<int64_t>(groups.ids[u]);
      const T* g = GroupRow(groups, u, d, grad, &summed_grad);
      const T* hess_row = nullptr;
      if (Rule::kUsesHessian) {
        // On steps that reuse a stored estimate the given one is not read.
        const bool reuse = store.rows != nullptr && !store.estimate;
        const T* given = reuse ? nullptr : GroupRow(groups, u, d, hess, &summed_hess);
        hess_row = StoredHessianRow(store, row, d, g, given, &scratch);
      }
      for (int k = 0; k < Rule::kNumSlots; ++k) {
        row_slots[k] = slots[k] + row * d;
      }
      UpdateRow<Rule>(config.params, config.thresholds, d, var + row * d,
                      row_slots, g, hess_row);
    }
  });
}

// The distinct ids of a batch in order of first appearance, each with the
// sum of its gradient rows (d values each, row u at values[u * d]).
template <typename T, typename Tindex>
struct SummedRows {
  std::vector<Tindex> ids;
  std::vector<T> values;
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
// their gradient rows in one pass: an open-addressing hash table (linear
// probing, at most half full, doubled when it would not be) maps an id to
// its distinct row, whose sum starts as the id's first gradient row and adds
// the others as they come. Positions are visited in batch order, so every
// sum adds exactly the terms GroupRow adds, in the same order: results equal
// the sorted path's bit for bit, whatever the number of parts. Parts split
// the distinct ids of one large batch between threads, each reading every
// id but summing only its own. For the many small batches of a multi-table
// step (one part each) this replaces a sort and a second pass over
// positions (measured on 26 tables of 1,024 Zipf ids, dim 16: sort and
// GroupRow 9-11 ns per id, this 6.5-7.5). Ids must have been range-checked.
// `Row` indexes the distinct rows in the table: int32_t, half the cache of
// int64_t, for any batch of fewer than 2^31 ids (SumDuplicateRows).
template <typename Row, typename T, typename Tindex>
void SumDuplicateRowsIndexedBy(const Tindex* ids, int64_t n, const T* grad, int64_t d,
                               SummedRows<T, Tindex>* out, int64_t part, int64_t parts) {
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
  out->ids.reserve(size);
  out->values.reserve(size * d);  // reserved, not filled: every value is written once
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
        break;
      }
      if (out->ids[u] == id) {
        T* sum = out->values.data() + u * d;
        for (int64_t j = 0; j < d; ++j) sum[j] += g[j];
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
void SumDuplicateRows(const Tindex* ids, int64_t n, const T* grad, int64_t d,
                      SummedRows<T, Tindex>* out, int64_t part = 0, int64_t parts = 1) {
  if (n < (int64_t{1} << 31)) {
    SumDuplicateRowsIndexedBy<int32_t>(ids, n, grad, d, out, part, parts);
  } else {
    SumDuplicateRowsIndexedBy<int64_t>(ids, n, grad, d, out, part, parts);
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
  SummedRows<T, Tindex> rows;
};

// Rows [begin, end) of one table's summed batch (`table.rows`), each given
// exactly the step ApplySparse gives it. Rows go in first-appearance order,
// not by address: the prefetch ahead, not the order, is what hides their
// cache misses.
template <typename Rule, typename T, typename Tindex>
void UpdateSummedRows(const SparseTable<Rule, T, Tindex>& table, int64_t begin, int64_t end) {
  T* row_slots[Rule::kNumSlots];
  const int64_t d = table.d;
  for (int64_t u = begin; u < end; ++u) {
    if (u + kPrefetchRows < end) {
      PrefetchRow<Rule::kNumSlots>(table.var, table.slots,
                                   static_cast<int64_t>(table.rows.ids[u + kPrefetchRows]), d);
    }
    const int64_t row = static_cast<int64_t>(table.rows.ids[u]);
    for (int k = 0; k < Rule::kNumSlots; ++k) row_slots[k] = table.slots[k] + row * d;
    UpdateRow<Rule>(table.config.params, table.config.thresholds, d, table.var + row * d,
                    row_slots, table.rows.values.data() + u * d, static_cast<const T*>(nullptr));
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
// range-checked (FirstOutOfRange). The batch is split by id hash into up to
// parallel_for.parallelism() parts; each part's duplicates are summed on its
// own thread (SumDuplicateRows) and its distinct rows updated there, while
// their sums are in that core's cache and with no second round of the
// thread pool. A batch of one part spreads its rows over the threads
// instead (ApplySparseTables). Parts own disjoint rows and sum in batch
// order, so results do not depend on their number. Rules that read
// a Hessian estimate group ids by sorting (GroupIds, ApplySparse), which sums
// the estimate like the gradient.
template <typename Rule, typename T, typename Tindex, typename ParallelFor>
void ApplySparseIds(const StepConfig<Rule, T>& config, int64_t d, T* var, T* const* slots,
                    const T* grad, const T* hess, const Tindex* ids, int64_t n,
                    ParallelFor&& parallel_for,
                    const HessianStore<T>& store = HessianStore<T>()) {
  if (n == 0) return;
  if constexpr (Rule::kUsesHessian) {
    ApplySparse(config, d, var, slots, grad, hess, GroupIds(ids, n), parallel_for, store);
  } else {
    const int64_t parts = std::max<int64_t>(
        1, std::min<int64_t>(parallel_for.parallelism(), n / kMinIdsPerPart));
    std::vector<SparseTable<Rule, T, Tindex>> tables(parts);
    for (SparseTable<Rule, T, Tindex>& table : tables) {
      table.config = config;
      table.d = d;
      table.var = var;
      std::copy(slots, slots + Rule::kNumSlots, table.slots);
    }
    if (parts == 1) {
      SumDuplicateRows(ids, n, grad, d, &tables[0].rows);
      ApplySparseTables(tables, parallel_for);
      return;
    }
    // One shard per part: a cost per part above any threshold of the sharder.
    parallel_for(parts, int64_t{1} << 30, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        SumDuplicateRows(ids, n, grad, d, &tables[p].rows, p, parts);
        UpdateSummedRows(tables[p], 0, tables[p].rows.size());
      }
    });
  }
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
