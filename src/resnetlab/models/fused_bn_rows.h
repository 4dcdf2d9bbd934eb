// The passes of resnetlab's fused batch-norm (fused_bn.cpp) over a channels_last tensor whose
// channels are a multiple of 16, with AVX-512. The two reductions: the forward's per-channel sums of
// x - pivot and their squares, and the backward's sums of g and g * (x - mean) (g = dy where ReLU let
// it through; stored too where the caller asks); and the two elementwise passes, y and dx, the same
// operations as fused_bn_passes.h's in the same order (the same bits), 16 values at a time with
// the bf16 rounding vectorised. fused_bn_passes.h computes the same sums for any
// tensor, one segment of rows at a time, its accumulators in memory: each value then costs a load
// and a store of two accumulators, and the forward's pass ran at 2.5x the time of a plain
// `x.sum()` of the same tensor with its data in cache (1.1x from memory; AMX Xeon, 16-64 channels).
// Here a thread keeps the sums of up to 64 channels in registers while it walks a block of rows (16
// channels to a register, 1-4 rows in flight): within 1.2x of `x.sum()` in cache.
//
// The sums are the same quantities in another order: fp32 over blocks of rows (kBlock up to 64
// channels, fewer for wider), gathered in fp64 per thread and added up in thread order,
// deterministic for a given thread count. g is dy's
// value or 0, so it is stored as dy's bits. Compiled where -march=native gives AVX-512 (F, BW, VL);
// elsewhere the callers take fused_bn_passes.h (`stats_in_registers`, `grad_sums_in_registers`).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <array>
#include <type_traits>
#include <vector>

#include "fused_bn_passes.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define RESNETLAB_BN_ROWS 1
#else
#define RESNETLAB_BN_ROWS 0
#endif

namespace resnetlab_bn {

#if RESNETLAB_BN_ROWS

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {  // bf16 -> fp32 is a 16-bit shift, exact
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// g = dy where the mask is set, else 0, stored with dy's own bits
inline void store_masked(float* out, const float* dy, __mmask16 m) {
  _mm512_storeu_ps(out, _mm512_maskz_loadu_ps(m, dy));
}
inline void store_masked(c10::BFloat16* out, const c10::BFloat16* dy, __mmask16 m) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_maskz_loadu_epi16(m, dy));
}

// Adds one block's register sums (U row sets of V registers each, per quantity) into the thread's
// fp64 sums for channels [c0, c0 + 16 V).
template <int V, int U>
inline void gather(const __m512 (&a)[U][V], double* part) {
  for (int v = 0; v < V; ++v) {
    __m512 t = a[0][v];
    for (int u = 1; u < U; ++u) t = _mm512_add_ps(t, a[u][v]);
    alignas(64) float f[16];
    _mm512_store_ps(f, t);
    for (int i = 0; i < 16; ++i) part[16 * v + i] += f[i];
  }
}

// row(r, u) for the rows [r0, r1), U at a time (u: the row's place in its group, whose sums it adds to).
template <int U, typename Row>
inline void walk_rows(int64_t r0, int64_t r1, Row row) {
  int64_t r = r0;
  for (; r + U <= r1; r += U)
    for (int u = 0; u < U; ++u) row(r + u, u);
  for (; r < r1; ++r) row(r, 0);
}

// Forward: sums of x - pivot and of its square over rows [r0, r1), channels [c0, c0 + 16 V);
// U = 4 / V rows at a time, each into its own registers, so that the additions overlap.
template <typename T, int V>
void stats_chunk(const T* x, int64_t C, int64_t r0, int64_t r1, int64_t c0, const float* pivot, double* s1,
                 double* s2) {
  constexpr int U = 4 / V;
  __m512 p[V], a[U][V], b[U][V];
  for (int v = 0; v < V; ++v) p[v] = _mm512_loadu_ps(pivot + c0 + 16 * v);
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) a[u][v] = b[u][v] = _mm512_setzero_ps();
  auto row = [&](int64_t r, int u) {
    const T* q = x + r * C + c0;
    for (int v = 0; v < V; ++v) {
      const __m512 d = _mm512_sub_ps(load16(q + 16 * v), p[v]);
      a[u][v] = _mm512_add_ps(a[u][v], d);
      b[u][v] = _mm512_fmadd_ps(d, d, b[u][v]);
    }
  };
  walk_rows<U>(r0, r1, row);
  gather<V, U>(a, s1 + c0);
  gather<V, U>(b, s2 + c0);
}

// Backward: sums of g and of g * (x - mean) over rows [r0, r1), channels [c0, c0 + 16 V), g = dy
// where y > 0 (kFromY) or x * scale + shift > 0 (kFromX: fused_bn_passes.h's pre_relu, the same
// fp32 fma, so the same bits decide); with kStoreG, g written to g_out.
template <typename T, int V, Mask kMask, bool kStoreG>
void grad_sums_chunk(const T* dy, const T* y, const T* x, T* g_out, int64_t C, int64_t r0, int64_t r1, int64_t c0,
                     const float* mean, const float* scale, const float* shift, double* s1, double* s2) {
  constexpr int U = 4 / V;
  __m512 m[V], sc[V], sh[V], a[U][V], b[U][V];
  for (int v = 0; v < V; ++v) {
    m[v] = _mm512_loadu_ps(mean + c0 + 16 * v);
    sc[v] = _mm512_loadu_ps(scale + c0 + 16 * v);
    sh[v] = _mm512_loadu_ps(shift + c0 + 16 * v);
  }
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) a[u][v] = b[u][v] = _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  auto row = [&](int64_t r, int u) {
    const int64_t o = r * C + c0;
    for (int v = 0; v < V; ++v) {
      const int64_t i = o + 16 * v;
      const __m512 xv = load16(x + i);
      __mmask16 keep;
      if constexpr (kMask == Mask::kFromY) keep = _mm512_cmp_ps_mask(load16(y + i), zero, _CMP_GT_OQ);
      else keep = _mm512_cmp_ps_mask(_mm512_fmadd_ps(xv, sc[v], sh[v]), zero, _CMP_GT_OQ);
      const __m512 g = _mm512_maskz_mov_ps(keep, load16(dy + i));
      a[u][v] = _mm512_add_ps(a[u][v], g);
      b[u][v] = _mm512_fmadd_ps(g, _mm512_sub_ps(xv, m[v]), b[u][v]);
      if constexpr (kStoreG) store_masked(g_out + i, dy + i, keep);
    }
  };
  walk_rows<U>(r0, r1, row);
  gather<V, U>(a, s1 + c0);
  gather<V, U>(b, s2 + c0);
}

// Both passes' driver (chunk: a StatsChunk or a GradSumsChunk): `chunk.template operator()<V>(r0,
// r1, c0, s1, s2)` for every block of kBlock rows of this thread's share and every run of 64, 32 or
// 16 channels; the threads' fp64 sums added up in thread order.
template <typename Chunk>
std::array<std::vector<double>, 2> sums_over_rows(const Shape& s, Chunk chunk) {
  const int64_t C = s.c, threads = max_threads();
  std::vector<double> parts(threads * 2 * C, 0.0);  // [thread][sum][channel]
  // rows per block: kBlock up to 64 channels; wider, fewer, so that a block of each operand stays
  // in L1 while each run of channels walks it
  const int64_t block = std::max<int64_t>(16, kBlock * 64 / std::max<int64_t>(C, 64));
  at::parallel_for(0, s.n * s.hw, kBlock, [&](int64_t begin, int64_t end) {
    double* s1 = parts.data() + at::get_thread_num() * 2 * C;
    double* s2 = s1 + C;
    for (int64_t r0 = begin; r0 < end; r0 += block) {
      const int64_t r1 = std::min(end, r0 + block);
      int64_t c0 = 0;
      for (; c0 + 64 <= C; c0 += 64) chunk.template operator()<4>(r0, r1, c0, s1, s2);
      if (c0 + 32 <= C) {
        chunk.template operator()<2>(r0, r1, c0, s1, s2);
        c0 += 32;
      }
      if (c0 < C) chunk.template operator()<1>(r0, r1, c0, s1, s2);
    }
  });
  return in_thread_order<2>(parts, threads, C);
}

template <typename T>
struct StatsChunk {
  const T* x;
  int64_t C;
  const float* pivot;
  template <int V>
  void operator()(int64_t r0, int64_t r1, int64_t c0, double* s1, double* s2) const {
    stats_chunk<T, V>(x, C, r0, r1, c0, pivot, s1, s2);
  }
};

template <typename T, Mask kMask, bool kStoreG>
struct GradSumsChunk {
  const T *dy, *y, *x;
  T* g_out;
  int64_t C;
  const float *mean, *scale, *shift;
  template <int V>
  void operator()(int64_t r0, int64_t r1, int64_t c0, double* s1, double* s2) const {
    grad_sums_chunk<T, V, kMask, kStoreG>(dy, y, x, g_out, C, r0, r1, c0, mean, scale, shift, s1, s2);
  }
};

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(c10::BFloat16* p, __m512 v) {  // round to nearest even, as fused_bn_passes.h's store
  __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

// The elementwise passes' driver: vec(i, c) for the 16 values at offset i (channels c .. c + 15) of
// every row, rows shared out as the general passes share them.
template <typename Vec>
void each_vector(const Shape& s, Vec vec) {
  const int64_t C = s.c;
  at::parallel_for(0, s.n * s.hw, kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c = 0; c < C; c += 16) vec(r * C + c, c);
  });
}

#endif

// Whether the passes here are used where they apply (the default), or fused_bn_passes.h's
// everywhere: a switch for the tests, which hold the two to the same results, and the benchmarks.
inline bool& row_passes_on() {
  static bool on = true;
  return on;
}

// The forward's sums of x - pivot and their squares by this header's pass, where it applies (fp32
// math, AVX-512, channels_last, channels a multiple of 16): then true, with `sums` set.
template <typename T, typename Acc>
bool stats_in_registers(const Shape& s, const T* x, const std::vector<double>& pivot,
                        std::array<std::vector<double>, 2>& sums) {
#if RESNETLAB_BN_ROWS
  if constexpr (std::is_same_v<Acc, float>) {
    if (row_passes_on() && s.channels_last && s.c % 16 == 0) {
      const std::vector<float> p(pivot.begin(), pivot.end());
      sums = sums_over_rows(s, StatsChunk<T>{x, s.c, p.data()});
      return true;
    }
  }
#endif
  return false;
}

// The backward's sums of g and g * (x - mean) (g stored to g_out with kStoreG) by this header's
// pass, where it applies; mean, scale and shift per channel, the first C values of each array. Up to
// kWidestGradSums channels: wider, the runs of channels write g a piece of each row at a time and
// the pass ran 1.2x slower than fused_bn_passes.h's (at ResNet-50's 256-2048 channels, AMX Xeon).
constexpr int64_t kWidestGradSums = 128;

template <typename T, typename Acc, Mask kMask, bool kStoreG>
bool grad_sums_in_registers(const Shape& s, const T* dy, const T* y, const T* x, T* g_out, const Acc* mean,
                            const Acc* scale, const Acc* shift, std::array<std::vector<double>, 2>& sums) {
#if RESNETLAB_BN_ROWS
  if constexpr (std::is_same_v<Acc, float>) {
    if (row_passes_on() && s.channels_last && s.c % 16 == 0 && s.c <= kWidestGradSums) {
      sums = sums_over_rows(s, GradSumsChunk<T, kMask, kStoreG>{dy, y, x, g_out, s.c, mean, scale, shift});
      return true;
    }
  }
#endif
  return false;
}

// The forward's y = relu(x * scale + shift (+ r)) by this header's pass, where it applies; scale and
// shift per channel (the first C values of each array). The same operations in the same order as
// fused_bn_passes.h's apply_segment, so the same bits.
template <typename T, typename Acc, bool kResidual>
bool apply_in_registers(const Shape& s, const T* x, const T* r, T* y, const Acc* scale, const Acc* shift) {
#if RESNETLAB_BN_ROWS
  if constexpr (std::is_same_v<Acc, float>) {
    if (row_passes_on() && s.channels_last && s.c % 16 == 0) {
      const __m512 zero = _mm512_setzero_ps();
      each_vector(s, [=](int64_t i, int64_t c) {
        __m512 v = _mm512_fmadd_ps(load16(x + i), _mm512_loadu_ps(scale + c), _mm512_loadu_ps(shift + c));
        if constexpr (kResidual) v = _mm512_add_ps(v, load16(r + i));
        store16(y + i, _mm512_max_ps(v, zero));  // NaN and -0 become +0, as `v > 0 ? v : 0`
      });
      return true;
    }
  }
#endif
  return false;
}

// The backward's dx = g * k1 + x * k2 + k3 by this header's pass, where it applies; g as the first
// pass stored it (kStoredG) or dy where ReLU let it through; per-channel arrays as above.
template <typename T, typename Acc, bool kStoredG, Mask kMask>
bool grad_input_in_registers(const Shape& s, const T* dy, const T* y, const T* x, T* dx, const T* g_in,
                             const Acc* k1, const Acc* k2, const Acc* k3, const Acc* scale, const Acc* shift) {
#if RESNETLAB_BN_ROWS
  if constexpr (std::is_same_v<Acc, float>) {
    if (row_passes_on() && s.channels_last && s.c % 16 == 0) {
      const __m512 zero = _mm512_setzero_ps();
      each_vector(s, [=](int64_t i, int64_t c) {
        const __m512 xv = load16(x + i);
        __m512 g;
        if constexpr (kStoredG) {
          g = load16(g_in + i);
        } else {
          __mmask16 keep;
          if constexpr (kMask == Mask::kFromY) keep = _mm512_cmp_ps_mask(load16(y + i), zero, _CMP_GT_OQ);
          else keep = _mm512_cmp_ps_mask(_mm512_fmadd_ps(xv, _mm512_loadu_ps(scale + c), _mm512_loadu_ps(shift + c)),
                                         zero, _CMP_GT_OQ);
          g = _mm512_maskz_mov_ps(keep, load16(dy + i));
        }
        const __m512 xk = _mm512_mul_ps(xv, _mm512_loadu_ps(k2 + c));  // fma(g, k1, x * k2) + k3, as the general pass
        store16(dx + i, _mm512_add_ps(_mm512_fmadd_ps(g, _mm512_loadu_ps(k1 + c), xk), _mm512_loadu_ps(k3 + c)));
      });
      return true;
    }
  }
#endif
  return false;
}

}  // namespace resnetlab_bn
