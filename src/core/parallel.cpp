#include "core/parallel.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OPTIQ_PAUSE() _mm_pause()
#else
#define OPTIQ_PAUSE() ((void)0)
#endif

namespace optiq {

namespace {

// How long a thread spins before it sleeps: long enough to bridge the gap
// between consecutive parallel loops of one token (a few microseconds), far
// too short to starve another process of the CPU.
constexpr auto kSpin = std::chrono::microseconds(50);

thread_local bool t_in_pool = false;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker(); });
  }
  ~ThreadPool() {
    stop_.store(true);
    generation_.fetch_add(1);
    generation_.notify_all();
    for (auto& t : workers_) t.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, int64_t grain, int threads, detail::RangeFn fn, void* ctx) {
    std::lock_guard<std::mutex> one_job(job_mutex_);  // concurrent callers queue up
    job_ = Job{fn, ctx, n, grain};
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    const int helpers = std::min(threads, size()) - 1;
    // Order matters: a worker that wins a participant slot must see this job.
    pending_.store(helpers, std::memory_order_relaxed);
    participants_.store(helpers, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
    if (helpers > 0) generation_.notify_all();
    t_in_pool = true;
    work();
    t_in_pool = false;
    // All work is handed out. Helpers that have not woken up yet must not be
    // waited for (on a busy machine that can take a scheduler time slice):
    // take back their unclaimed slots, then wait only for the helpers still
    // running a range (spin briefly, then sleep).
    const int unclaimed = participants_.exchange(0, std::memory_order_acq_rel);
    if (unclaimed > 0) pending_.fetch_sub(unclaimed, std::memory_order_acq_rel);
    wait_until([&] { return pending_.load(std::memory_order_acquire) == 0; }, pending_, [&] {
      return pending_.load(std::memory_order_acquire);
    });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  struct Job {
    detail::RangeFn fn = nullptr;
    void* ctx = nullptr;
    int64_t n = 0, grain = 1;
  };

  template <typename Done, typename Atomic, typename Load>
  static void wait_until(Done done, Atomic& a, Load load) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!done()) {
      for (int i = 0; i < 64 && !done(); ++i) OPTIQ_PAUSE();
      if (done()) return;
      if (std::chrono::steady_clock::now() - t0 > kSpin) {
        auto v = load();
        if (done()) return;
        a.wait(v, std::memory_order_acquire);
      }
    }
  }

  void work() {
    for (;;) {
      const int64_t b = next_.fetch_add(job_.grain, std::memory_order_relaxed);
      if (b >= job_.n) return;
      const int64_t e = std::min(job_.n, b + job_.grain);
      try {
        job_.fn(job_.ctx, b, e);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void worker() {
    t_in_pool = true;
    uint32_t seen = 0;
    for (;;) {
      wait_until([&] { return generation_.load(std::memory_order_acquire) != seen; }, generation_,
                 [&] { return seen; });
      seen = generation_.load(std::memory_order_acquire);
      if (stop_.load()) return;
      // Join only if this job wants this many threads.
      int slots = participants_.load(std::memory_order_acquire);
      while (slots > 0 && !participants_.compare_exchange_weak(slots, slots - 1, std::memory_order_acq_rel)) {
      }
      if (slots <= 0) continue;
      work();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_all();
    }
  }

  std::vector<std::jthread> workers_;
  std::mutex job_mutex_, error_mutex_;
  Job job_;
  std::exception_ptr error_;
  std::atomic<uint32_t> generation_{0};  // 32-bit: waits are a plain futex
  std::atomic<int64_t> next_{0};
  std::atomic<int> participants_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

std::mutex g_pool_mutex;
std::unique_ptr<ThreadPool> g_pool;
std::atomic<int> g_threads{0};

ThreadPool& pool() {
  std::lock_guard<std::mutex> g(g_pool_mutex);
  const int want = num_threads();
  if (!g_pool || g_pool->size() != want) {
    g_pool.reset();
    g_pool = std::make_unique<ThreadPool>(want);
  }
  return *g_pool;
}

}  // namespace

int default_num_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int n = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n < 1) n = static_cast<int>(std::thread::hardware_concurrency());
  return n < 1 ? 1 : n;
}

void set_num_threads(int n) { g_threads.store(n > 0 ? n : default_num_threads()); }

int num_threads() {
  int t = g_threads.load();
  if (t == 0) {
    set_num_threads(0);
    t = g_threads.load();
  }
  return t;
}

namespace detail {

void parallel_run(int64_t n, int64_t grain, int max_threads, RangeFn fn, void* ctx) {
  int threads = max_threads > 0 ? std::min(max_threads, num_threads()) : num_threads();
  const int64_t chunks = (n + grain - 1) / grain;
  if (chunks < threads) threads = static_cast<int>(chunks);
  if (threads <= 1 || t_in_pool) {
    for (int64_t b = 0; b < n; b += grain) fn(ctx, b, std::min(n, b + grain));
    return;
  }
  pool().run(n, grain, threads, fn, ctx);
}

}  // namespace detail

}  // namespace optiq
