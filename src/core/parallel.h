// Thread count for all parallel loops. OpenMP does the work; this only holds
// the user's --threads choice (default: every core).
#pragma once

namespace optiq {

void set_num_threads(int n);  // n <= 0: all cores
int num_threads();

}  // namespace optiq
