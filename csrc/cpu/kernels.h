// CPU (C++17 + OpenMP) kernels of the probe: declarations.
//
// All arrays are C-contiguous. `logits` is (n, m, k): row (i, j) = the k class scores of
// example i under regularisation value j, as produced by one GEMM X @ [W_1 .. W_m]. The callers
// (the pybind11 bindings, fed by suite/kernels.py) have checked shapes, dtypes and label ranges.
// `num_threads` <= 0 means the OpenMP default. No global state: every buffer is local.
#pragma once

#include <cstdint>

namespace suite {
namespace cpu {

// logits <- softmax(logits over k) - onehot(labels), in place.
// loss[j] = sum_i logsumexp(z_ij) - z_ij[y_i]   (m,) double, overwritten
// grad_bias[j, :] = sum_i (P - Y)[i, j, :]      (m, k) float, overwritten
void softmax_xent_grad(float* logits, const std::int64_t* labels, std::int64_t n,
                       std::int64_t m, std::int64_t k, double* loss, float* grad_bias,
                       int num_threads);

// logits <- sigmoid(logits) - targets (targets (n, k), broadcast over m), in place.
// loss[j] = sum_{i,c} softplus(z) - t z         (m,) double, overwritten
// grad_bias[j, :] = sum_i (S - T)[i, j, :]      (m, k) float, overwritten
void sigmoid_bce_grad(float* logits, const float* targets, std::int64_t n, std::int64_t m,
                      std::int64_t k, double* loss, float* grad_bias, int num_threads);

// out[i, j] = argmax_c logits[i, j, c] (first maximum; a NaN counts as the maximum)  (n, m)
void argmax(const float* logits, std::int64_t n, std::int64_t m, std::int64_t k,
            std::int64_t* out, int num_threads);

}  // namespace cpu
}  // namespace suite
