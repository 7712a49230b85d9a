#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/parallel.h"

namespace optiq {
namespace {

struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

TEST(Parallel, EveryIndexExactlyOnce) {
  ThreadsGuard g;
  for (int threads : {1, 2, 3, 8}) {
    set_num_threads(threads);
    for (int64_t n : {1, 7, 64, 1001}) {
      for (int64_t grain : {1, 3, 100}) {
        std::vector<std::atomic<int>> hits(n);
        parallel_for_range(n, grain, [&](int64_t b, int64_t e) {
          ASSERT_LE(e - b, grain);
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
      }
    }
  }
}

TEST(Parallel, UsesSeveralThreadsAndNestsSerially) {
  ThreadsGuard g;
  set_num_threads(4);
  std::atomic<int> inner_total{0};
  std::vector<std::thread::id> ids(64);
  parallel_for(64, [&](int64_t i) {
    ids[i] = std::this_thread::get_id();
    // A nested loop runs on the calling thread.
    parallel_for(10, [&](int64_t) {
      EXPECT_EQ(std::this_thread::get_id(), ids[i]);
      inner_total.fetch_add(1);
    });
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  });
  EXPECT_EQ(inner_total.load(), 640);
  std::vector<std::thread::id> distinct;
  for (auto id : ids)
    if (std::find(distinct.begin(), distinct.end(), id) == distinct.end()) distinct.push_back(id);
  EXPECT_GE(distinct.size(), 2u);
}

TEST(Parallel, ExceptionsReachTheCaller) {
  ThreadsGuard g;
  set_num_threads(2);
  std::atomic<int> done{0};
  EXPECT_THROW(parallel_for(100,
                            [&](int64_t i) {
                              if (i == 37) throw std::runtime_error("task 37");
                              done.fetch_add(1);
                            }),
               std::runtime_error);
  EXPECT_EQ(done.load(), 99);  // the other tasks still ran
  // The pool still works afterwards.
  std::atomic<int> again{0};
  parallel_for(10, [&](int64_t) { again.fetch_add(1); });
  EXPECT_EQ(again.load(), 10);
}

TEST(Parallel, SumDoesNotDependOnThreadCount) {
  ThreadsGuard g;
  auto f = [](int64_t i) { return 1.0 / (1.0 + static_cast<double>(i) * 0.37); };
  set_num_threads(1);
  const double one = parallel_sum(100000, f, 97);
  for (int threads : {2, 5}) {
    set_num_threads(threads);
    EXPECT_EQ(parallel_sum(100000, f, 97), one);
  }
}

TEST(Parallel, ManySmallJobsBackToBack) {
  // Decode issues hundreds of tiny parallel loops per token: none may be lost.
  ThreadsGuard g;
  set_num_threads(2);
  int64_t total = 0;
  for (int j = 0; j < 20000; ++j) {
    std::atomic<int64_t> s{0};
    parallel_for_range(4, 1, [&](int64_t b, int64_t e) { s.fetch_add(e - b); });
    total += s.load();
  }
  EXPECT_EQ(total, 80000);
}

TEST(Parallel, DefaultThreadsIsAtLeastOne) { EXPECT_GE(default_num_threads(), 1); }

}  // namespace
}  // namespace optiq
