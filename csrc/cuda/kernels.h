// CUDA kernels of the probe: host-side launchers (plain C++ interface, no CUDA headers needed).
//
// Same contracts as csrc/cpu/kernels.h, on device memory. Pointers are raw device addresses
// (torch's tensor.data_ptr()); `device` is the CUDA device index that owns them and `stream`
// the cudaStream_t to launch on (torch.cuda.current_stream().cuda_stream), passed as an integer.
// The launchers are asynchronous on that stream; a launch error throws std::runtime_error.
#pragma once

#include <cstdint>

namespace suite {
namespace cuda {

void softmax_xent_grad(float* logits, const std::int64_t* labels, std::int64_t n,
                       std::int64_t m, std::int64_t k, double* loss, float* grad_bias,
                       int device, std::uintptr_t stream);

void sigmoid_bce_grad(float* logits, const float* targets, std::int64_t n, std::int64_t m,
                      std::int64_t k, double* loss, float* grad_bias, int device,
                      std::uintptr_t stream);

void argmax(const float* logits, std::int64_t n, std::int64_t m, std::int64_t k,
            std::int64_t* out, int device, std::uintptr_t stream);

}  // namespace cuda
}  // namespace suite
