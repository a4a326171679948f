// Branch-free float exp/log that GCC/Clang vectorise under `#pragma omp simd`.
//
// std::exp/std::log only vectorise with -ffast-math (glibc declares its SIMD variants only then),
// which would also break the NaN/inf handling elsewhere. These are the Cephes single-precision
// polynomials (relative error about 2 ulp on their ranges), written with plain arithmetic and
// bit casts so every lane does the same work. They need -fno-trapping-math to vectorise (GCC
// keeps float compares as branches otherwise); CMakeLists.txt sets it for csrc/cpu.
#pragma once

#include <cstdint>
#include <cstring>

namespace suite {
namespace vmath {

inline float as_float(std::int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline std::int32_t as_int(float f) {
  std::int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// exp(x) for x <= 0 (all the kernels need: z - max, -|z|). Below -87 the result is 0: the true
// value (< 1.7e-38) would be a subnormal float, far below the resolution of any sum it enters
// (each contains a term exp(0) = 1), and subnormals would slow the arithmetic down many times.
// Both clamps are selects, not branches (with -fno-trapping-math GCC if-converts them).
inline float exp_nonpos(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kC1 = 0.693359375f;     // ln 2 split in a part exact in float ...
  constexpr float kC2 = -2.12194440e-4f;  // ... and the remainder (Cody-Waite)
  constexpr float kRound = 12582912.0f;   // 1.5 * 2^23: adding/subtracting rounds to integer
  const bool underflow = x < -87.0f;
  x = underflow ? -87.0f : x;
  x = x > 0.0f ? 0.0f : x;
  const float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * kC1;
  r = r - n * kC2;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  // 2^n from its exponent bits; n in [-126, 0] so the result is a normal float
  const float scale = as_float((static_cast<std::int32_t>(n) + 127) << 23);
  return underflow ? 0.0f : p * scale;
}

// log(x) for positive normal finite x (Cephes logf): x = f 2^e, f in [sqrt(1/2), sqrt(2)).
inline float log_pos(float x) {
  constexpr float kSqrtHalf = 0.707106781186547524f;
  const std::int32_t bits = as_int(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float f = as_float((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool small = f < kSqrtHalf;
  e = small ? e - 1.0f : e;
  f = small ? f + f - 1.0f : f - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + -2.12194440e-4f * e;
  y = y - 0.5f * z;
  return f + y + 0.693359375f * e;
}

// log1p(t) for t in [0, 1], given inv_u = 1 / (1 + t) (the kernels have it already): with
// u = 1 + t rounded to float, log1p(t) = log(u) + (t - (u - 1)) / u to first order, the second
// term restoring what the rounding of u lost (exactly t where u rounds to 1). No division.
inline float log1p_unit(float t, float inv_u) {
  const float u = 1.0f + t;
  return log_pos(u) + (t - (u - 1.0f)) * inv_u;
}

}  // namespace vmath
}  // namespace suite
