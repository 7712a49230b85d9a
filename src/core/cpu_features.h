// CPU features that __builtin_cpu_supports does not name on every compiler
// optiq builds with: clang 14 (the fuzz build, tests/fuzz) knows neither
// "f16c" nor "avxvnni". Read from cpuid directly; callers check AVX2 (and
// with it the OS's AVX state) first, as they did with the builtin.
#pragma once
#include <cpuid.h>

namespace optiq {

inline bool cpu_has_f16c() {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

// AVX-VNNI (VEX vpdpbusd): CPUID.(EAX=7, ECX=1):EAX bit 4.
inline bool cpu_has_avx_vnni() {
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
}

}  // namespace optiq
