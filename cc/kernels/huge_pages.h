// Transparent huge pages for the large host buffers the ops write.
//
// A sparse step updates rows scattered over tables of hundreds of megabytes:
// with 4 KB pages nearly every row of the variable and of each slot is a TLB
// miss, and its page walk (two-dimensional under a hypervisor) costs about
// as much as the row's cache miss. Linux backs memory with 2 MB pages where
// the process asks for them (transparent_hugepage "madvise", a common
// default) or everywhere ("always"); TensorFlow does not ask. So the first
// time an op writes a host buffer of at least kHugePageMinBytes (and again
// every kHugePageRenewSightings writes), it asks for the buffer's aligned
// interior (GROUP_LASSO_TF_HUGE_PAGES):
//
// - unset or "1": MADV_HUGEPAGE. Free: the kernel's khugepaged thread then
//   moves the pages already there to huge pages in the background (by
//   default about 16 MB every 10 s), and pages faulted in later are huge.
// - "collapse": also MADV_COLLAPSE (Linux 6.1+), which backs the whole
//   buffer with huge pages at once by copying it: about 2 s per GB on the
//   first step that writes it (measured here: 5.2-6.2 s for a 10^7 x 16
//   table and its 3 slots, 2.5 GB), in exchange for about 10-18% less time in
//   every later sparse step of a 9.7M-row, 26-table DeepFM
//   (docs/benchmarks.md, issue 17).
// - "0": nothing.
//
// All of them are hints that keep the contents; where the kernel refuses
// (THP "never", an older kernel) nothing changes. Setting
// GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc 2.35+) instead makes every
// large allocation huge from the start, with no copy (docs/api.md).
#ifndef GROUP_LASSO_TF_CC_KERNELS_HUGE_PAGES_H_
#define GROUP_LASSO_TF_CC_KERNELS_HUGE_PAGES_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1+; older kernels answer EINVAL
#endif
#endif

namespace group_lasso_tf {

// Buffers smaller than this are left alone (two huge pages: the aligned
// interior of a smaller one may hold none). Not larger: what misses the TLB
// is the step's whole working set, every table and slot together, so tens
// of mid-sized tables miss it as much as one large one (measured: a 32 MB
// threshold kept half of the gain of "collapse" below 4 MB's).
constexpr uint64_t kHugePageMinBytes = uint64_t{4} << 20;

// How often a buffer already seen is asked for again, in sightings (about
// steps): TensorFlow frees buffers and the allocator hands the same address
// and size to new ones (a rebuilt model, a copy-on-write copy), whose pages
// carry no advice, and nothing tells the op. One madvise per buffer every
// 1,000 steps costs nothing measurable; asking every step would take the
// process's memory-map lock for each large buffer of every step.
constexpr uint32_t kHugePageRenewSightings = 1000;

inline void AdviseHugePages(const void* data, uint64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePageMinBytes) return;
  static std::mutex mu;
  static auto* sightings = new std::map<std::pair<uint64_t, uint64_t>, uint32_t>();
  const uint64_t begin = reinterpret_cast<uint64_t>(data);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (sightings->size() > 65536) sightings->clear();  // buffers long gone
    if ((*sightings)[{begin, bytes}]++ % kHugePageRenewSightings != 0) return;
  }
  // Read when asking, not once per process (a test or a user may change it).
  const char* mode = std::getenv("GROUP_LASSO_TF_HUGE_PAGES");
  if (mode != nullptr && std::strcmp(mode, "0") == 0) return;
  constexpr uint64_t kHuge = uint64_t{2} << 20;
  const uint64_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uint64_t last = (begin + bytes) & ~(kHuge - 1);
  if (last <= first) return;
  void* start = reinterpret_cast<void*>(first);
  if (madvise(start, last - first, MADV_HUGEPAGE) != 0) return;
  if (mode != nullptr && std::strcmp(mode, "collapse") == 0) {
    madvise(start, last - first, MADV_COLLAPSE);
  }
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace group_lasso_tf

#endif  // GROUP_LASSO_TF_CC_KERNELS_HUGE_PAGES_H_
