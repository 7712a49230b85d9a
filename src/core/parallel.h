// optiq's thread pool: every parallel loop in the library runs through
// parallel_for. Why not OpenMP: GNU OpenMP's workers spin for a long time
// between regions (GOMP_SPINCOUNT); as soon as another process shares the
// cores, a spinning worker holds the CPU the preempted one needs and decode
// collapses (0.9 tok/s instead of 50 on 2 cores, issue 9). This pool spins only
// briefly (a few microseconds, enough to cover the gap between two matmuls of
// one token), then sleeps on a futex (std::atomic::wait), and hands out work
// dynamically in small chunks so that a preempted thread's share is taken over
// by the threads that still run.
//
// Nested calls (parallel_for inside a task) run serially on the calling thread.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace optiq {

// n <= 0: the CPUs this process may run on (sched_getaffinity), at least 1.
void set_num_threads(int n);
int num_threads();
// Threads the default (n <= 0) would choose.
int default_num_threads();

namespace detail {
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_run(int64_t n, int64_t grain, int max_threads, RangeFn fn, void* ctx);
}  // namespace detail

// Calls fn(begin, end) over disjoint ranges covering [0, n), each at most
// `grain` long, on up to `max_threads` threads (<= 0: num_threads()); the
// caller works too. Returns when all ranges are done. An exception thrown by
// fn is rethrown here (the first one; on the pool the other ranges still run,
// serially the loop stops at it).
template <typename Fn>
void parallel_for_range(int64_t n, int64_t grain, Fn&& fn, int max_threads = 0) {
  if (n <= 0) return;
  auto tramp = [](void* ctx, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<Fn>*>(ctx))(b, e); };
  detail::parallel_run(n, grain < 1 ? 1 : grain, max_threads, tramp, const_cast<void*>(static_cast<const void*>(&fn)));
}

// Calls fn(i) for every i in [0, n), grouped into ranges of `grain`.
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t grain = 1, int max_threads = 0) {
  parallel_for_range(
      n, grain,
      [&fn](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) fn(i);
      },
      max_threads);
}

// Sums fn(i) over [0, n) in a fixed order of fixed chunks, so that the result
// does not depend on the thread count or on scheduling.
template <typename Fn>
double parallel_sum(int64_t n, Fn&& fn, int64_t grain = 64);


template <typename Fn>
double parallel_sum(int64_t n, Fn&& fn, int64_t grain) {
  if (n <= 0) return 0.0;
  if (grain < 1) grain = 1;
  const int64_t chunks = (n + grain - 1) / grain;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, [&](int64_t c) {
    double s = 0;
    const int64_t e = std::min(n, (c + 1) * grain);
    for (int64_t i = c * grain; i < e; ++i) s += fn(i);
    part[static_cast<size_t>(c)] = s;
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}
}  // namespace optiq
