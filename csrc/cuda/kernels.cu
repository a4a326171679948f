// CUDA kernels of the probe (see kernels.h and csrc/cpu/kernels.h for the contracts).
//
// Mirrors csrc/cpu/kernels.cpp:
//   * rows kernel: grid (ceil(n / kRowsPerBlock), m). Block (b, j) holds kWarpsPerBlock warps;
//     each warp walks kRowsPerWarp examples i of value j, one row (i, j) of k floats at a time,
//     lanes striding over k (coalesced), with warp-shuffle max and sum. It overwrites the row
//     with P - Y and adds its loss to a per-lane double; the block reduces those and adds one
//     double atomically to loss[j] (sm_60+ has native double atomicAdd).
//   * bias kernel: grad_bias = column sums of the gradient viewed as (n, m*k): each thread sums
//     one column over a chunk of rows (consecutive threads read consecutive addresses) and adds
//     it atomically. A second, cheap pass rather than per-element atomics into m*k addresses.
//   * argmax kernel: one warp per row, shuffle reduction of (value, index).
// Float arithmetic per row, double for the loss reduction, as on the CPU. Accurate expf/logf
// (no --use_fast_math). The atomics make the last bits of the sums order-dependent.
#include "kernels.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace suite {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarp * kWarpsPerBlock;                 // 256
constexpr int kRowsPerWarp = 8;
constexpr int kRowsPerBlock = kWarpsPerBlock * kRowsPerWarp;      // 64 examples per block
constexpr std::int64_t kBiasRowsPerChunk = 256;                   // rows per column-sum thread
constexpr std::int64_t kMaxGridY = 65535;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("suite._C CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

// Makes `device` current for the launches and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum of one double per thread of the block, added atomically to *out (called by all threads).
__device__ __forceinline__ void block_add(double v, double* out) {
  __shared__ double partial[kWarpsPerBlock];
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += partial[w];
    atomicAdd(out, total);
  }
}

// Softmax rows of value j = blockIdx.y: z <- softmax(z) - onehot(y); loss[j] += sum of
// logsumexp(z) - z_y over the block's rows.
__global__ void __launch_bounds__(kThreads)
    softmax_rows_kernel(float* __restrict__ logits, const std::int64_t* __restrict__ labels,
                        std::int64_t n, std::int64_t m, std::int64_t k,
                        double* __restrict__ loss) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const std::int64_t j = blockIdx.y;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock +
                             static_cast<std::int64_t>(warp) * kRowsPerWarp;
  double lane_loss = 0.0;
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const std::int64_t i = first + r;
    if (i >= n) break;  // uniform across the warp
    float* z = logits + (i * m + j) * k;  // (k,)
    const std::int64_t y = labels[i];
    const bool valid = y >= 0 && y < k;   // checked in Python; never read out of bounds
    // z_y is read before any lane overwrites the row (see the __syncwarp below)
    const float zy = valid ? z[y] : nanf("");
    float mx = -INFINITY;
    for (std::int64_t c = lane; c < k; c += kWarp) mx = fmaxf(mx, z[c]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (std::int64_t c = lane; c < k; c += kWarp) s += expf(z[c] - mx);
    s = warp_sum(s);  // >= 1: the max term is exp(0)
    if (lane == 0) lane_loss += log(static_cast<double>(s)) + (static_cast<double>(mx) - zy);
    const float inv = 1.0f / s;
    __syncwarp();  // every lane has read z_y (and the row) before any lane writes it
    for (std::int64_t c = lane; c < k; c += kWarp)
      z[c] = expf(z[c] - mx) * inv - (c == y ? 1.0f : 0.0f);
  }
  block_add(lane_loss, loss + j);
}

// One-vs-rest rows of value j = blockIdx.y: z <- sigmoid(z) - t; loss[j] += sum of
// softplus(z) - t z, softplus(z) = max(z, 0) + log1p(exp(-|z|)).
__global__ void __launch_bounds__(kThreads)
    sigmoid_rows_kernel(float* __restrict__ logits, const float* __restrict__ targets,
                        std::int64_t n, std::int64_t m, std::int64_t k,
                        double* __restrict__ loss) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const std::int64_t j = blockIdx.y;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock +
                             static_cast<std::int64_t>(warp) * kRowsPerWarp;
  double lane_loss = 0.0;
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const std::int64_t i = first + r;
    if (i >= n) break;
    float* z = logits + (i * m + j) * k;      // (k,)
    const float* t = targets + i * k;         // (k,)
    float row = 0.0f;
    for (std::int64_t c = lane; c < k; c += kWarp) {
      const float x = z[c];
      const float e = expf(-fabsf(x));        // in (0, 1]
      const float inv = 1.0f / (1.0f + e);
      const float sig = x >= 0.0f ? inv : e * inv;
      row += fmaxf(x, 0.0f) + log1pf(e) - t[c] * x;
      z[c] = sig - t[c];
    }
    lane_loss += static_cast<double>(row);
  }
  block_add(lane_loss, loss + j);
}

// out[c] += sum over rows [y * chunk, (y + 1) * chunk) of g[row, c]; g is (n, cols).
__global__ void __launch_bounds__(kThreads)
    column_sum_kernel(const float* __restrict__ g, std::int64_t n, std::int64_t cols,
                      std::int64_t chunk, float* __restrict__ out) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.y) * chunk;
  const std::int64_t i1 = i0 + chunk < n ? i0 + chunk : n;
  float s = 0.0f;
  for (std::int64_t i = i0; i < i1; ++i) s += g[i * cols + c];
  atomicAdd(out + c, s);
}

// Is (v1, i1) a better argmax candidate than (v2, i2)? A NaN beats any number, then larger
// values win, ties go to the lower index (torch.argmax semantics). i2 < 0 means "none yet".
__device__ __forceinline__ bool better(float v1, std::int64_t i1, float v2, std::int64_t i2) {
  if (i1 < 0) return false;
  if (i2 < 0) return true;
  const bool n1 = isnan(v1), n2 = isnan(v2);
  if (n1 != n2) return n1;
  if (!n1 && v1 != v2) return v1 > v2;
  return i1 < i2;
}

// out[r] = argmax_c logits[r, c] for r in [0, rows); one warp per row, grid-stride.
__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const float* __restrict__ logits, std::int64_t rows, std::int64_t k,
                  std::int64_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock +
                        threadIdx.x / kWarp;
       r < rows; r += warps) {
    const float* z = logits + r * k;
    float best = 0.0f;
    std::int64_t at = -1;
    for (std::int64_t c = lane; c < k; c += kWarp) {
      const float v = z[c];
      if (better(v, c, best, at)) {
        best = v;
        at = c;
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float v = __shfl_xor_sync(kFullMask, best, offset);
      const std::int64_t i = __shfl_xor_sync(kFullMask, at, offset);
      if (better(v, i, best, at)) {
        best = v;
        at = i;
      }
    }
    if (lane == 0) out[r] = at;
  }
}

// Shared tail of the two loss kernels: zero the outputs, launch `rows`, then the bias pass.
template <class Launch>
void run_loss(float* logits, std::int64_t n, std::int64_t m, std::int64_t k, double* loss,
              float* grad_bias, int device, std::uintptr_t stream_handle, const char* name,
              Launch launch_rows) {
  if (m > kMaxGridY) throw std::invalid_argument("suite._C: more than 65535 values (m)");
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  check(cudaMemsetAsync(loss, 0, sizeof(double) * m, stream), "cudaMemsetAsync");
  check(cudaMemsetAsync(grad_bias, 0, sizeof(float) * m * k, stream), "cudaMemsetAsync");
  if (n == 0 || m == 0) return;
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(m));
  launch_rows(grid, stream);
  check(cudaGetLastError(), name);
  const std::int64_t cols = m * k;
  std::int64_t chunk = kBiasRowsPerChunk;
  if ((n + chunk - 1) / chunk > kMaxGridY) chunk = (n + kMaxGridY - 1) / kMaxGridY;
  const dim3 bias_grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                       static_cast<unsigned>((n + chunk - 1) / chunk));
  column_sum_kernel<<<bias_grid, kThreads, 0, stream>>>(logits, n, cols, chunk, grad_bias);
  check(cudaGetLastError(), "column_sum_kernel");
}

}  // namespace

void softmax_xent_grad(float* logits, const std::int64_t* labels, std::int64_t n,
                       std::int64_t m, std::int64_t k, double* loss, float* grad_bias,
                       int device, std::uintptr_t stream) {
  run_loss(logits, n, m, k, loss, grad_bias, device, stream, "softmax_rows_kernel",
           [&](dim3 grid, cudaStream_t s) {
             softmax_rows_kernel<<<grid, kThreads, 0, s>>>(logits, labels, n, m, k, loss);
           });
}

void sigmoid_bce_grad(float* logits, const float* targets, std::int64_t n, std::int64_t m,
                      std::int64_t k, double* loss, float* grad_bias, int device,
                      std::uintptr_t stream) {
  run_loss(logits, n, m, k, loss, grad_bias, device, stream, "sigmoid_rows_kernel",
           [&](dim3 grid, cudaStream_t s) {
             sigmoid_rows_kernel<<<grid, kThreads, 0, s>>>(logits, targets, n, m, k, loss);
           });
}

void argmax(const float* logits, std::int64_t n, std::int64_t m, std::int64_t k,
            std::int64_t* out, int device, std::uintptr_t stream_handle) {
  const std::int64_t rows = n * m;
  if (rows == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  // enough blocks to fill any current GPU; the grid-stride loop covers the rest
  const std::int64_t wanted = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const unsigned blocks = static_cast<unsigned>(wanted < 65536 ? wanted : 65536);
  argmax_kernel<<<blocks, kThreads, 0, stream>>>(logits, rows, k, out);
  check(cudaGetLastError(), "argmax_kernel");
}

}  // namespace cuda
}  // namespace suite
