// The element-wise pieces of the forward pass, exposed so that tests can
// check each against a plain reference.
#pragma once
#include <cstdint>

namespace optiq {

// out = x / rms(x) * w over `dim` values (out may alias x).
void rms_norm(const float* x, const float* w, int64_t dim, float eps, float* out);

// Rotate-half RoPE of the first `rot_dim` dims of `n_heads` heads of
// `head_dim` at position `pos`; cos/sin are multiplied by `mscale`
// (longrope's attention factor; 1 otherwise).
// inv_freq holds rot_dim / 2 frequencies.
void rope(float* v, int n_heads, int head_dim, int rot_dim, int pos, const float* inv_freq, float mscale = 1.0f);

// llama.cpp's CPU GeGLU: the tanh-approximated GELU (PyTorch's
// gelu(approximate="tanh")) looked up at the fp16-rounded input, result in fp16.
// The fp32 GELU and silu are kernels/activation.h.
float gelu_tanh_llamacpp(float x);

// cap * tanh(x / cap) in place (Gemma's logit soft-capping).
void softcap(float* x, int64_t n, float cap);

// Index of the largest of x[0..n) (the first of equal ones, NaNs skipped;
// -1 when n <= 0 or every value is NaN): greedy decoding's pick. SSE2 max
// then compare passes; std::max_element's scalar walk over a 128k-token
// vocabulary took ~0.1-0.2 ms, time the GPU sat idle between decode steps.
int64_t argmax(const float* x, int64_t n);

// First key position a query at `pos` attends to: 0, or the start of a
// sliding window of `window` positions that ends at the query itself.
inline int window_start(int pos, int window) { return window > 0 && pos >= window ? pos - window + 1 : 0; }

}  // namespace optiq
