// The passes over memory of resnetlab's fused batch-norm kernels (fused_bn.cpp, the one source
// torch.utils.cpp_extension compiles; resnetlab/models/native.py hashes this header with it).
//
// A tensor is either NCHW-contiguous (planes of H*W values per (n, c)) or channels_last
// (rows of C values per pixel); the caller makes every tensor of one call share x's layout.
// Sums are taken in the math type (fp32 for bf16/fp32, fp64 for fp64) over blocks of rows and
// gathered in fp64, one buffer per thread added up in thread order: deterministic for a given
// thread count, like PyTorch's own batch-norm.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

namespace resnetlab_bn {


inline float load(const c10::BFloat16* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }

inline void store(c10::BFloat16* p, int64_t i, float v) {  // round to nearest even, as PyTorch
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  reinterpret_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(bits >> 16);
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }

constexpr int64_t kBlock = 256;  // rows (or plane values) summed in the math type before fp64

struct Shape {
  int64_t n, c, hw;
  bool channels_last;
};

inline Shape shape_of(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "fused batch-norm: expected a 4-D tensor");
  Shape s{x.size(0), x.size(1), x.size(2) * x.size(3), false};
  if (x.is_contiguous()) return s;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "fused batch-norm: x must be NCHW or channels_last");
  s.channels_last = true;
  return s;
}

// The four passes are written as "segments": `len` contiguous values whose channel parameters are
// either one per value (channels_last rows) or one for all (an NCHW plane). Loads of every operand
// are unconditional and the pointers restrict, so that GCC vectorises the loops by itself; only
// the reductions over a plane say `omp simd` (a float sum may not be reordered otherwise), as
// GCC gives up on the bf16 stores inside an `omp simd` loop.
template <typename T, typename Acc, bool kPerValue>
inline void sums_segment(const T* __restrict x, int64_t len, const Acc* __restrict pivot,
                         Acc* __restrict s1, Acc* __restrict s2) {
  if constexpr (kPerValue) {
    for (int64_t c = 0; c < len; ++c) {
      const Acc d = load(x, c) - pivot[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  } else {
    const Acc p = pivot[0];
    Acc a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < len; ++i) {
      const Acc d = load(x, i) - p;
      a += d;
      b += d * d;
    }
    s1[0] += a;
    s2[0] += b;
  }
}

// Where backward finds ReLU's mask: in the saved output y (y > 0), or, without a residual, in x
// itself through the forward's own scale and shift (x * scale + shift > 0, computed by the same
// pre_relu as the forward, so the same bits decide): one tensor fewer read twice.
enum class Mask { kFromY, kFromX };

template <typename Acc>
inline Acc pre_relu(Acc x, Acc scale, Acc shift) { return std::fma(x, scale, shift); }

template <typename T, typename Acc, Mask kMask>
inline Acc masked(const T* __restrict dy, const T* __restrict y, const T* __restrict x, int64_t i,
                  Acc scale, Acc shift) {
  const Acc d = load(dy, i);
  if constexpr (kMask == Mask::kFromY) return load(y, i) > Acc(0) ? d : Acc(0);
  else return pre_relu(load(x, i), scale, shift) > Acc(0) ? d : Acc(0);
}

// Sums of g and g * (x - mean), g = dy where ReLU let the value through; with kStoreG, g itself
// stored too (with a residual g is its gradient, and the second pass then reads g and x, not dy,
// y and x: one tensor fewer over memory; g is dy's value or 0, so the same bits in every dtype).
template <typename T, typename Acc, bool kPerValue, Mask kMask, bool kStoreG>
inline void grad_sums_segment(const T* __restrict dy, const T* __restrict y, const T* __restrict x, int64_t len,
                              const Acc* __restrict mean, const Acc* __restrict scale, const Acc* __restrict shift,
                              Acc* __restrict s1, Acc* __restrict s2, T* __restrict g_out) {
  if constexpr (kPerValue) {
    for (int64_t c = 0; c < len; ++c) {
      const Acc g = masked<T, Acc, kMask>(dy, y, x, c, scale[c], shift[c]);
      s1[c] += g;
      s2[c] += g * (load(x, c) - mean[c]);
      if constexpr (kStoreG) store(g_out, c, g);
    }
  } else {
    const Acc m = mean[0], sc = scale[0], sh = shift[0];
    Acc a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < len; ++i) {
      const Acc g = masked<T, Acc, kMask>(dy, y, x, i, sc, sh);
      a += g;
      b += g * (load(x, i) - m);
    }
    s1[0] += a;
    s2[0] += b;
    if constexpr (kStoreG)  // a loop of its own: the stores would keep the reduction above scalar
      for (int64_t i = 0; i < len; ++i) store(g_out, i, masked<T, Acc, kMask>(dy, y, x, i, sc, sh));
  }
}

// y = relu(x * scale + shift (+ r))
template <typename T, typename Acc, bool kPerValue, bool kResidual>
inline void apply_segment(const T* __restrict x, const T* __restrict r, T* __restrict y, int64_t len,
                          const Acc* __restrict scale, const Acc* __restrict shift) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t c = kPerValue ? i : 0;
    Acc v = pre_relu(load(x, i), scale[c], shift[c]);
    if constexpr (kResidual) v += load(r, i);
    store(y, i, v > Acc(0) ? v : Acc(0));
  }
}

// dx = g * k1 + x * k2 + k3, g = dy where ReLU let the value through, or (kStoredG) g as the first
// pass stored it
template <typename T, typename Acc, bool kPerValue, bool kStoredG, Mask kMask>
inline void grad_input_segment(const T* __restrict dy, const T* __restrict y, const T* __restrict x,
                               T* __restrict dx, const T* __restrict g_in, int64_t len, const Acc* __restrict k1,
                               const Acc* __restrict k2, const Acc* __restrict k3, const Acc* __restrict scale,
                               const Acc* __restrict shift) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t c = kPerValue ? i : 0;
    const Acc g = kStoredG ? Acc(load(g_in, i)) : masked<T, Acc, kMask>(dy, y, x, i, scale[c], shift[c]);
    // the multiply-add written out, so that no compiler's contraction choice decides the bits (GCC
    // contracted the plain expression to this very form; fused_bn_rows.h writes the same)
    store(dx, i, std::fma(g, k1[c], load(x, i) * k2[c]) + k3[c]);
  }
}

inline int64_t max_threads() { return std::max<int64_t>({at::get_num_threads(), omp_get_max_threads(), 1}); }

// A channels_last row holds only C values (16 in a CIFAR ResNet's first stage): too short a loop
// to vectorise well. So rows are taken k at a time, as one segment of k*C values whose channel
// parameters are repeated k times ("wide"); a chunk's last few rows go one at a time.
inline int64_t rows_per_segment(const Shape& s) { return s.channels_last ? std::max<int64_t>(1, 256 / s.c) : 1; }

template <typename Acc>
std::vector<Acc> wide(const std::vector<Acc>& per_channel, int64_t k) {
  std::vector<Acc> out(per_channel.size() * k);
  for (size_t i = 0; i < out.size(); ++i) out[i] = per_channel[i % per_channel.size()];
  return out;
}

// The threads' fp64 sums, parts[thread][sum][channel], added up in thread order.
template <int kSums>
std::array<std::vector<double>, kSums> in_thread_order(const std::vector<double>& parts, int64_t threads, int64_t C) {
  std::array<std::vector<double>, kSums> out;
  for (int j = 0; j < kSums; ++j) {
    out[j].assign(C, 0.0);
    for (int64_t t = 0; t < threads; ++t)
      for (int64_t c = 0; c < C; ++c) out[j][c] += parts[(t * kSums + j) * C + c];
  }
  return out;
}

// Per-channel sums of kSums quantities: `segment(offset, len, param_offset, sums)` adds the values
// of one segment into accumulators sums[0..kSums) (channels_last: per value of a wide segment;
// NCHW: one for the plane's channel), its channel parameters (widened by the caller with
// rows_per_segment) starting at param_offset. Blocks are summed in Acc, gathered in fp64 per
// thread, and the threads added up in thread order.
template <int kSums, typename Acc, typename Segment>
std::array<std::vector<double>, kSums> channel_sums(const Shape& s, Segment segment) {
  const int64_t C = s.c, threads = max_threads(), k = rows_per_segment(s);
  std::vector<double> parts(threads * kSums * C, 0.0);  // [thread][sum][channel]
  if (s.channels_last) {
    at::parallel_for(0, s.n * s.hw, kBlock, [&](int64_t begin, int64_t end) {
      double* part = parts.data() + at::get_thread_num() * kSums * C;
      std::vector<Acc> acc(kSums * k * C);
      std::array<Acc*, kSums> sums;
      for (int j = 0; j < kSums; ++j) sums[j] = acc.data() + j * k * C;
      for (int64_t r0 = begin; r0 < end; r0 += kBlock * k) {
        std::fill(acc.begin(), acc.end(), Acc(0));
        const int64_t r1 = std::min(end, r0 + kBlock * k);
        int64_t r = r0;
        for (; r + k <= r1; r += k) segment(r * C, k * C, 0, sums);
        for (; r < r1; ++r) segment(r * C, C, 0, sums);
        for (int j = 0; j < kSums; ++j)
          for (int64_t v = 0; v < k * C; ++v) part[j * C + v % C] += sums[j][v];
      }
    });
  } else {
    const int64_t hw = s.hw;
    at::parallel_for(0, s.n * C, 1, [&](int64_t begin, int64_t end) {
      double* part = parts.data() + at::get_thread_num() * kSums * C;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        for (int64_t i = 0; i < hw; i += kBlock) {
          std::array<Acc, kSums> acc{};
          std::array<Acc*, kSums> sums;
          for (int j = 0; j < kSums; ++j) sums[j] = &acc[j];
          segment(plane * hw + i, std::min(kBlock, hw - i), c, sums);
          for (int j = 0; j < kSums; ++j) part[j * C + c] += acc[j];
        }
      }
    });
  }
  return in_thread_order<kSums>(parts, threads, C);
}

// Runs `segment(offset, len, param_offset)` over the whole tensor: wide segments of rows
// (channels_last, parameters widened by the caller with rows_per_segment) or planes (NCHW).
template <typename Segment>
void channel_map(const Shape& s, Segment segment) {
  const int64_t C = s.c, hw = s.hw, k = rows_per_segment(s);
  if (s.channels_last) {
    at::parallel_for(0, s.n * hw, kBlock, [&](int64_t begin, int64_t end) {
      int64_t r = begin;
      for (; r + k <= end; r += k) segment(r * C, k * C, 0);
      for (; r < end; ++r) segment(r * C, C, 0);
    });
  } else {
    at::parallel_for(0, s.n * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) segment(plane * hw, hw, plane % C);
    });
  }
}

}  // namespace resnetlab_bn
