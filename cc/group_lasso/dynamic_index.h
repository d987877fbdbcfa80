// The key index of a dynamic embedding table (docs/dynamic_embedding.md):
// any int64 key -> a row of a fixed pool, rows made on first sight (after
// `min_count` sightings) and freed when the group lasso zeroes them.
//
// Framework-free, over plain int64 arrays that the TensorFlow ops keep in
// ordinary variables (so checkpoints, SavedModels and parameter servers hold
// the index like any other state). Every array starts all zero, which is the
// empty index:
//
//   table    [table_size, 2]  open addressing, linear probing: (key, row + 1);
//                             row + 1 == 0 marks an empty slot. table_size is a
//                             power of two >= 2 * capacity; deletion shifts the
//                             following entries back (no tombstones).
//   rows     [capacity, 3]    per pool row: (key, last_seen + 1, stale slots);
//                             last_seen + 1 == 0 marks a free row; stale slots
//                             is 1 for a row taken by eviction, whose
//                             optimizer slots still hold the old key's state
//                             until the optimizer clears them (ClearStale).
//   free     [capacity]       stack of released rows.
//   pending  [pending_size, 2] (key, sightings) of keys not admitted yet
//                             (min_count > 1); sightings 0 = empty slot.
//   stats    [kNumStats]      counters, below.
#ifndef GROUP_LASSO_TF_CC_GROUP_LASSO_DYNAMIC_INDEX_H_
#define GROUP_LASSO_TF_CC_GROUP_LASSO_DYNAMIC_INDEX_H_

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace group_lasso {
namespace dynamic {

enum Stat {
  kLive = 0,       // rows holding a key
  kAdmitted = 1,   // keys ever given a row
  kReleased = 2,   // rows freed because the update zeroed them
  kEvicted = 3,    // rows taken from their key by on_full = evict_lru
  kDropped = 4,    // lookups of a key to be admitted while the pool was full
  kNextUnused = 5, // rows [next_unused, capacity) were never used
  kFreeTop = 6,    // size of the free stack
  kClock = 7,      // lookups so far: the LRU clock
  kNumStats = 8,
};

enum class OnFull { kDrop, kEvictLru };

struct IndexView {
  int64_t* table;
  int64_t table_size;  // a power of two
  int64_t* rows;
  int64_t capacity;
  int64_t* free;
  int64_t* pending;
  int64_t pending_size;  // a power of two
  int64_t* stats;
};

// splitmix64's finalizer: hashed ids are often sequential or share low bits.
inline uint64_t Mix(int64_t key) {
  uint64_t z = static_cast<uint64_t>(key) + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Shard in [0, num_shards) of `key` in a table sharded by key: the high 32
// bits of Mix scaled to the range (no modulo bias worth the name, and
// independent of the low bits that pick the key's slot inside its shard).
inline int32_t ShardOf(int64_t key, int32_t num_shards) {
  return static_cast<int32_t>(((Mix(key) >> 32) * static_cast<uint64_t>(num_shards)) >> 32);
}

// Slot of `key` in an open-addressing array of (key, value) pairs whose
// value 0 marks empty, or of the empty slot where it would go; -1 if the
// array is full and the key absent.
inline int64_t Probe(const int64_t* pairs, int64_t size, int64_t key) {
  const uint64_t mask = static_cast<uint64_t>(size - 1);
  uint64_t slot = Mix(key) & mask;
  for (int64_t n = 0; n < size; ++n, slot = (slot + 1) & mask) {
    const int64_t* entry = pairs + 2 * slot;
    if (entry[1] == 0 || entry[0] == key) return static_cast<int64_t>(slot);
  }
  return -1;
}

// Removes the entry at `slot` and shifts later entries of its probe run back
// (linear probing's deletion without tombstones).
inline void EraseSlot(int64_t* pairs, int64_t size, int64_t slot) {
  const uint64_t mask = static_cast<uint64_t>(size - 1);
  uint64_t hole = static_cast<uint64_t>(slot);
  uint64_t next = (hole + 1) & mask;
  // Bounded: in a full array (the pending sightings can fill theirs) no
  // slot is empty, and every other entry is visited once.
  for (int64_t n = 1; n < size && pairs[2 * next + 1] != 0; ++n) {
    const uint64_t home = Mix(pairs[2 * next]) & mask;
    // Move `next` into the hole unless its home lies cyclically in (hole, next].
    const bool stays = hole <= next ? (hole < home && home <= next)
                                    : (hole < home || home <= next);
    if (!stays) {
      pairs[2 * hole] = pairs[2 * next];
      pairs[2 * hole + 1] = pairs[2 * next + 1];
      hole = next;
    }
    next = (next + 1) & mask;
  }
  pairs[2 * hole] = 0;
  pairs[2 * hole + 1] = 0;
}

inline int64_t FindRow(const IndexView& index, int64_t key) {
  const int64_t slot = Probe(index.table, index.table_size, key);
  if (slot < 0 || index.table[2 * slot + 1] == 0) return -1;
  return index.table[2 * slot + 1] - 1;
}

// A row for a key being admitted: a released one, then a never used one;
// -1 when the pool is full.
inline int64_t TakeFreeRow(const IndexView& index) {
  int64_t* stats = index.stats;
  if (stats[kFreeTop] > 0) return index.free[--stats[kFreeTop]];
  if (stats[kNextUnused] < index.capacity) return stats[kNextUnused]++;
  return -1;
}

inline void Bind(const IndexView& index, int64_t key, int64_t row, int64_t clock) {
  const int64_t slot = Probe(index.table, index.table_size, key);
  index.table[2 * slot] = key;
  index.table[2 * slot + 1] = row + 1;
  index.rows[3 * row] = key;
  index.rows[3 * row + 1] = clock + 1;
  ++index.stats[kLive];
  ++index.stats[kAdmitted];
}

// Unbinds a live row's key; the row is not yet on the free stack.
inline void Unbind(const IndexView& index, int64_t row) {
  const int64_t key = index.rows[3 * row];
  const int64_t slot = Probe(index.table, index.table_size, key);
  if (slot >= 0 && index.table[2 * slot + 1] == row + 1) {
    EraseSlot(index.table, index.table_size, slot);
  }
  index.rows[3 * row] = 0;
  index.rows[3 * row + 1] = 0;
  --index.stats[kLive];
}

// Counts a sighting of a key not admitted yet; true once it has been seen
// min_count times (it then leaves the pending array). When the pending array
// is full, it is emptied first: sightings older than that are forgotten
// (docs/dynamic_embedding.md).
inline bool Sighted(const IndexView& index, int64_t key, int64_t min_count) {
  if (min_count <= 1) return true;
  int64_t slot = Probe(index.pending, index.pending_size, key);
  if (slot < 0) {
    std::fill(index.pending, index.pending + 2 * index.pending_size, 0);
    slot = Probe(index.pending, index.pending_size, key);
  }
  int64_t* entry = index.pending + 2 * slot;
  entry[0] = key;
  if (++entry[1] < min_count) return false;
  EraseSlot(index.pending, index.pending_size, slot);
  return true;
}

// The live rows least recently seen, oldest first, at most `count`, none
// seen at or after `clock` (this lookup's own rows stay).
inline std::vector<int64_t> LeastRecentRows(const IndexView& index, int64_t count,
                                            int64_t clock) {
  std::vector<std::pair<int64_t, int64_t>> seen;  // (last_seen + 1, row)
  for (int64_t row = 0; row < index.capacity; ++row) {
    const int64_t last = index.rows[3 * row + 1];
    if (last != 0 && last - 1 < clock) seen.emplace_back(last, row);
  }
  count = std::min<int64_t>(count, static_cast<int64_t>(seen.size()));
  std::partial_sort(seen.begin(), seen.begin() + count, seen.end());
  std::vector<int64_t> rows(count);
  for (int64_t i = 0; i < count; ++i) rows[i] = seen[i].second;
  return rows;
}

// Runs fn(begin, end) over [0, n) in one piece: the default of the
// `for_ranges` argument below (kernels pass their thread pool's ParallelFor).
struct InOnePiece {
  template <typename Fn>
  void operator()(int64_t n, Fn&& fn) const {
    if (n > 0) fn(0, n);
  }
};

// Gives each id its pool row (`out_rows`; `capacity`, the shared zero row,
// for ids not admitted) and marks the rows taken in this call (`out_fresh`:
// the caller writes initial values into them and clears their slots, for
// rows reused by eviction).
//
// Two phases. First the ids already in the index find their rows and are
// marked seen by this call; this phase only reads the key table and writes
// every mark with the same value, so `for_ranges` may split it over threads.
// Then the others, in id order, are counted towards min_count and admitted,
// a row taken from the free stack, the never used rows, or (evict_lru) the
// least recently seen keys, never one looked up in this call. Results do not
// depend on threads.
template <typename ForRanges = InOnePiece>
inline void Lookup(const IndexView& index, const int64_t* ids, int64_t n, int64_t min_count,
                   OnFull on_full, int64_t* out_rows, bool* out_fresh,
                   ForRanges&& for_ranges = ForRanges()) {
  int64_t* stats = index.stats;
  const int64_t clock = stats[kClock]++;
  for_ranges(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = FindRow(index, ids[i]);
      // Relaxed atomic: other ranges may mark the same row, with this value.
      if (row >= 0) __atomic_store_n(index.rows + 3 * row + 1, clock + 1, __ATOMIC_RELAXED);
      out_rows[i] = row;
      out_fresh[i] = false;
    }
  });
  std::vector<int64_t> victims;  // LRU rows, found once per call when needed
  size_t next_victim = 0;
  bool victims_found = false;
  for (int64_t i = 0; i < n; ++i) {
    if (out_rows[i] >= 0) continue;
    const int64_t key = ids[i];
    int64_t row = FindRow(index, key);  // admitted earlier in this call
    if (row >= 0) {
      out_rows[i] = row;
      continue;
    }
    out_rows[i] = index.capacity;
    if (!Sighted(index, key, min_count)) continue;
    row = TakeFreeRow(index);
    if (row < 0 && on_full == OnFull::kEvictLru) {
      if (!victims_found) {
        // Enough victims for every remaining id of the call.
        victims = LeastRecentRows(index, n - i, clock);
        victims_found = true;
      }
      if (next_victim < victims.size()) {
        row = victims[next_victim++];
        Unbind(index, row);
        index.rows[3 * row + 2] = 1;  // its slots are the evicted key's
        ++stats[kEvicted];
      }
    }
    if (row < 0) {
      ++stats[kDropped];
      continue;
    }
    Bind(index, key, row, clock);
    out_rows[i] = row;
    out_fresh[i] = true;
  }
  // A key taken in this call and looked up again later in it: only its first
  // position is marked fresh, which is what the caller needs.
}

// The rows of ids without admitting any or touching the index: inference.
template <typename ForRanges = InOnePiece>
inline void Find(const IndexView& index, const int64_t* ids, int64_t n, int64_t* out_rows,
                 bool* out_fresh, ForRanges&& for_ranges = ForRanges()) {
  for_ranges(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = FindRow(index, ids[i]);
      out_rows[i] = row >= 0 ? row : index.capacity;
      out_fresh[i] = false;
    }
  });
}

// Frees `row` (a live row the update left exactly zero): its key leaves the
// index and the row goes on the free stack. Returns false for a row that is
// not live (already freed, or the zero row).
inline bool Release(const IndexView& index, int64_t row) {
  if (row < 0 || row >= index.capacity || index.rows[3 * row + 1] == 0) return false;
  Unbind(index, row);
  index.free[index.stats[kFreeTop]++] = row;
  ++index.stats[kReleased];
  return true;
}

// Whether the optimizer slots of `row` must be cleared before its update
// (a row taken by eviction); clears the mark.
inline bool TakeStale(const IndexView& index, int64_t row) {
  if (row < 0 || row >= index.capacity || index.rows[3 * row + 2] == 0) return false;
  index.rows[3 * row + 2] = 0;
  return true;
}

}  // namespace dynamic
}  // namespace group_lasso

#endif  // GROUP_LASSO_TF_CC_GROUP_LASSO_DYNAMIC_INDEX_H_
