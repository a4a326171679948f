// CPU kernels of the probe (see kernels.h for the contracts).
//
// Structure shared by the two loss kernels (and mirrored by csrc/cuda/kernels.cu):
//   * the n examples are split into one contiguous chunk per thread (static, so the result is
//     deterministic for a given thread count);
//   * each thread walks its rows (i, j) once; a row of k floats stays in L1 while the three
//     short loops over k (max, exp-and-sum, normalise-and-accumulate) run on it, each a
//     `#pragma omp simd` loop with float arithmetic;
//   * the per-row loss is added in double to a thread-local (m,) accumulator, and P - Y to a
//     thread-local (m, k) float bias-gradient accumulator;
//   * after the parallel region the accumulators are reduced across threads in thread order.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "vec_math.h"

// Compile the row loops for AVX-512 and AVX2 too, picked at load time by the CPU (GCC function
// multi-versioning through an ifunc), so one portable wheel still uses wide vectors. The cloned
// functions are plain serial functions called from inside the OpenMP region.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SUITE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SUITE_CLONES
#endif

namespace suite {
namespace cpu {
namespace {

using vmath::exp_nonpos;
using vmath::log1p_unit;

int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

// Threads for n independent items: the requested count (0 = OpenMP's default), at most n.
int thread_count(std::int64_t n, int num_threads) {
  return static_cast<int>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(resolve_threads(num_threads), n)));
}

// Run body(t, i0, i1) on T threads, thread t taking the contiguous items [i0, i1) of [0, n).
template <class Body>
void for_each_chunk(std::int64_t n, int T, Body body) {
#pragma omp parallel num_threads(T)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    body(t, n * t / T, n * (t + 1) / T);
  }
}

// Rows i in [i0, i1) of the softmax kernel, all j. acc: (m, k) bias-gradient partial sums,
// loss: (m,) partial sums; both accumulated into (the caller zeroes them).
SUITE_CLONES
void softmax_rows(float* __restrict logits, const std::int64_t* __restrict labels,
                  std::int64_t i0, std::int64_t i1, std::int64_t m, std::int64_t k,
                  float* __restrict acc, double* __restrict loss) {
  for (std::int64_t i = i0; i < i1; ++i) {
    const std::int64_t y = labels[i];
    for (std::int64_t j = 0; j < m; ++j) {
      float* __restrict z = logits + (i * m + j) * k;  // (k,)
      float* __restrict a = acc + j * k;               // (k,)
      float mx = z[0];
#pragma omp simd reduction(max : mx)
      for (std::int64_t c = 0; c < k; ++c) mx = z[c] > mx ? z[c] : mx;  // (not std::max:
                                                                         // GCC keeps that scalar)
      const float zy = z[y];
      // e_c = exp(z_c - max) in place; s = sum_c e_c >= 1 (the max term is exp(0))
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (std::int64_t c = 0; c < k; ++c) {
        const float e = exp_nonpos(z[c] - mx);
        z[c] = e;
        s += e;
      }
      // -log p_y = logsumexp(z) - z_y = log(s) + (max - z_y), in double for the reduction
      loss[j] += std::log(static_cast<double>(s)) + (static_cast<double>(mx) - zy);
      const float inv = 1.0f / s;
#pragma omp simd
      for (std::int64_t c = 0; c < k; ++c) {
        const float p = z[c] * inv;
        z[c] = p;
        a[c] += p;
      }
      z[y] -= 1.0f;  // P - Y
      a[y] -= 1.0f;
    }
  }
}

// Rows i in [i0, i1) of the one-vs-rest kernel. targets: (n, k), shared by the m values.
SUITE_CLONES
void sigmoid_rows(float* __restrict logits, const float* __restrict targets, std::int64_t i0,
                  std::int64_t i1, std::int64_t m, std::int64_t k, float* __restrict acc,
                  double* __restrict loss) {
  for (std::int64_t i = i0; i < i1; ++i) {
    const float* __restrict t = targets + i * k;  // (k,)
    for (std::int64_t j = 0; j < m; ++j) {
      float* __restrict z = logits + (i * m + j) * k;  // (k,)
      float* __restrict a = acc + j * k;               // (k,)
      float row = 0.0f;
#pragma omp simd reduction(+ : row)
      for (std::int64_t c = 0; c < k; ++c) {
        const float x = z[c];
        // e = exp(-|x|) in (0, 1]; sigmoid(x) = 1/(1+e) for x >= 0, e/(1+e) for x < 0
        const float e = exp_nonpos(-std::fabs(x));
        const float inv = 1.0f / (1.0f + e);
        const float sig = x >= 0.0f ? inv : e * inv;
        // softplus(x) - t x = max(x, 0) + log1p(e) - t x
        row += (x > 0.0f ? x : 0.0f) + log1p_unit(e, inv) - t[c] * x;
        const float g = sig - t[c];
        z[c] = g;
        a[c] += g;
      }
      loss[j] += static_cast<double>(row);
    }
  }
}

// The shared driver: run `rows(i0, i1, acc, loss)` on one chunk of examples per thread, then
// reduce the thread-local accumulators into loss (m,) and grad_bias (m, k).
template <class Rows>
void run_chunks(std::int64_t n, std::int64_t m, std::int64_t k, double* loss, float* grad_bias,
                int num_threads, Rows rows) {
  const int T = thread_count(n, num_threads);
  const std::int64_t mk = m * k;
  std::vector<float> acc(static_cast<std::size_t>(T) * mk, 0.0f);    // (T, m, k)
  std::vector<double> part(static_cast<std::size_t>(T) * m, 0.0);    // (T, m)
  for_each_chunk(n, T, [&](int t, std::int64_t i0, std::int64_t i1) {
    rows(i0, i1, acc.data() + t * mk, part.data() + t * m);
  });
  for (std::int64_t j = 0; j < m; ++j) {
    double s = 0.0;
    for (int t = 0; t < T; ++t) s += part[t * m + j];
    loss[j] = s;
  }
#pragma omp parallel for num_threads(T) schedule(static)
  for (std::int64_t c = 0; c < mk; ++c) {
    float s = 0.0f;
    for (int t = 0; t < T; ++t) s += acc[t * mk + c];
    grad_bias[c] = s;
  }
}

// Index of the first maximum of z[0..k), a NaN counting as larger than any number.
SUITE_CLONES
void argmax_rows(const float* __restrict logits, std::int64_t r0, std::int64_t r1,
                 std::int64_t k, std::int64_t* __restrict out) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const float* __restrict z = logits + r * k;
    // pass 1 (vectorised): the largest number and whether any NaN is present
    float mx = z[0];
    int nan = 0;
#pragma omp simd reduction(max : mx) reduction(| : nan)
    for (std::int64_t c = 0; c < k; ++c) {
      mx = z[c] > mx ? z[c] : mx;
      nan |= z[c] != z[c];
    }
    // pass 2: the first position holding it (k/2 compares on average, exits early)
    std::int64_t best = 0;
    for (std::int64_t c = 0; c < k; ++c) {
      if (nan ? z[c] != z[c] : z[c] == mx) {
        best = c;
        break;
      }
    }
    out[r] = best;
  }
}

}  // namespace

void softmax_xent_grad(float* logits, const std::int64_t* labels, std::int64_t n,
                       std::int64_t m, std::int64_t k, double* loss, float* grad_bias,
                       int num_threads) {
  run_chunks(n, m, k, loss, grad_bias, num_threads,
             [=](std::int64_t i0, std::int64_t i1, float* acc, double* part) {
               softmax_rows(logits, labels, i0, i1, m, k, acc, part);
             });
}

void sigmoid_bce_grad(float* logits, const float* targets, std::int64_t n, std::int64_t m,
                      std::int64_t k, double* loss, float* grad_bias, int num_threads) {
  run_chunks(n, m, k, loss, grad_bias, num_threads,
             [=](std::int64_t i0, std::int64_t i1, float* acc, double* part) {
               sigmoid_rows(logits, targets, i0, i1, m, k, acc, part);
             });
}

void argmax(const float* logits, std::int64_t n, std::int64_t m, std::int64_t k,
            std::int64_t* out, int num_threads) {
  const std::int64_t rows = n * m;
  for_each_chunk(rows, thread_count(rows, num_threads),
                 [&](int, std::int64_t r0, std::int64_t r1) {
                   argmax_rows(logits, r0, r1, k, out);
                 });
}

}  // namespace cpu
}  // namespace suite
