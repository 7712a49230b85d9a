// OPTIQ_SIMD_CLONES before a function compiles it three times, for x86-64-v4
// (AVX-512), x86-64-v3 (AVX2 + FMA) and the portable baseline, and the loader
// picks the build for the CPU the program runs on (target_clones: an ifunc
// resolved once). Meant for small loop kernels outside src/kernels/ (whose
// hand-written per-ISA files stay the way for the products) that the baseline
// -O2 build leaves scalar: with `#pragma omp simd` (-fopenmp-simd) the loop is
// vectorised whatever the cost model says. Like the kernels', their results may
// differ in the last bits between CPUs (fused multiply-adds, vector sums).
// OPTIQ_ISA (which steers src/kernels/) does not reach them: cpuid does.
//
// Not under ThreadSanitizer: its runtime is not up when the loader resolves
// the ifuncs, and the program crashes before main (GCC 12 and Clang 14).
#pragma once

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define OPTIQ_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define OPTIQ_TSAN 1
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(OPTIQ_NO_SIMD_CLONES) && !defined(OPTIQ_TSAN)
#define OPTIQ_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OPTIQ_SIMD_CLONES
#endif
