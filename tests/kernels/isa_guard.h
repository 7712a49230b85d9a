// What the kernels' tests share: the instruction sets this CPU can run (each
// test runs every one of them), and a guard that puts the active one back.
#pragma once
#include <vector>

#include "kernels/matmul.h"

namespace optiq::test {

inline std::vector<Isa> available_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

struct IsaGuard {
  Isa saved = active_isa();
  IsaGuard() = default;
  IsaGuard(const IsaGuard&) = delete;
  IsaGuard& operator=(const IsaGuard&) = delete;
  ~IsaGuard() { set_isa(saved); }
};

}  // namespace optiq::test
