// The search quantizer and the fused min/max rows compiled for AVX512 (CMake adds the flags for
// *_avx512.cpp); quantizer.cpp calls it only after a cpuid check.
#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/affine.h"
#include "core/half.h"
#include "quant/quantizer_impl.h"

namespace optiq::detail {

#define QS_FN(name) name##_avx512
#include "quant/quantizer_search.inc"
#include "quant/quantizer_minmax.inc"
#undef QS_FN

}  // namespace optiq::detail
