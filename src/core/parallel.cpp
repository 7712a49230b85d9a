#include "core/parallel.h"

#include <omp.h>

#include <thread>

namespace optiq {

namespace {
int g_threads = 0;
}

void set_num_threads(int n) {
  g_threads = n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency());
  if (g_threads < 1) g_threads = 1;
  omp_set_num_threads(g_threads);
}

int num_threads() {
  if (g_threads == 0) set_num_threads(0);
  return g_threads;
}

}  // namespace optiq
