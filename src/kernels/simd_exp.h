// exp(x) on SIMD vectors, for softmax and activation functions, written once
// over the vector traits of kernels/simd_vec.h. Cephes' expf: x = n ln2 + r
// with |r| <= ln2 / 2, e^r by a degree-6 polynomial, times 2^n; within 2 ulp
// of std::exp over the clamped range [-87.34, 88.38] (below it the result is
// ~1e-38, not 0; above, ~2^127).
#pragma once

namespace optiq::kern::simd_exp {

inline constexpr float kLo = -87.33654f, kHi = 88.37626f;
inline constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
inline constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                       kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// V: traits with F, set1, min, max, mul, add, fmadd, fnmadd, round (to
// nearest) and scale2n(e, n) = e * 2^n for integer-valued n.
template <typename V>
typename V::F exp(typename V::F x) {
  x = V::min(V::max(x, V::set1(kLo)), V::set1(kHi));
  const typename V::F n = V::round(V::mul(x, V::set1(kLog2e)));
  typename V::F r = V::fnmadd(n, V::set1(kLn2Hi), x);
  r = V::fnmadd(n, V::set1(kLn2Lo), r);
  typename V::F p = V::set1(kP0);
  p = V::fmadd(p, r, V::set1(kP1));
  p = V::fmadd(p, r, V::set1(kP2));
  p = V::fmadd(p, r, V::set1(kP3));
  p = V::fmadd(p, r, V::set1(kP4));
  p = V::fmadd(p, r, V::set1(kP5));
  const typename V::F e = V::fmadd(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::scale2n(e, n);
}

}  // namespace optiq::kern::simd_exp
