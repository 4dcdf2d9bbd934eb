// The passes of the pair kernels of fused_bn.cpp: the end of a post-activation block whose
// shortcut is a projection, relu(bn(a) + bn_shortcut(b)), a the main branch's last convolution and
// b the projection's. PyTorch runs it as four passes forward (the shortcut's batch-norm, then the
// block's) and six back; fused, the forward reads a and b for their statistics and once more to
// write y, and the backward reads dy, y, a and b twice and writes both gradients.
#pragma once
#include "fused_bn_passes.h"

namespace resnetlab_bn {

// y = relu(a * scale_a + shift_a + b * scale_b + shift_b)
template <typename T, typename Acc, bool kPerValue>
inline void apply_pair_segment(const T* __restrict a, const T* __restrict b, T* __restrict y, int64_t len,
                               const Acc* __restrict scale_a, const Acc* __restrict shift_a,
                               const Acc* __restrict scale_b, const Acc* __restrict shift_b) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t c = kPerValue ? i : 0;
    const Acc v = pre_relu(load(a, i), scale_a[c], shift_a[c]) + pre_relu(load(b, i), scale_b[c], shift_b[c]);
    store(y, i, v > Acc(0) ? v : Acc(0));
  }
}

// Sums of g, g * (a - mean_a) and g * (b - mean_b), g = dy where y > 0.
template <typename T, typename Acc, bool kPerValue>
inline void grad_sums_pair_segment(const T* __restrict dy, const T* __restrict y, const T* __restrict a,
                                   const T* __restrict b, int64_t len, const Acc* __restrict mean_a,
                                   const Acc* __restrict mean_b, Acc* __restrict s1, Acc* __restrict s2,
                                   Acc* __restrict s3) {
  if constexpr (kPerValue) {
    for (int64_t c = 0; c < len; ++c) {
      const Acc g = masked<T, Acc, Mask::kFromY>(dy, y, nullptr, c, Acc(0), Acc(0));
      s1[c] += g;
      s2[c] += g * (load(a, c) - mean_a[c]);
      s3[c] += g * (load(b, c) - mean_b[c]);
    }
  } else {
    const Acc ma = mean_a[0], mb = mean_b[0];
    Acc t1 = 0, t2 = 0, t3 = 0;
#pragma omp simd reduction(+ : t1, t2, t3)
    for (int64_t i = 0; i < len; ++i) {
      const Acc g = masked<T, Acc, Mask::kFromY>(dy, y, nullptr, i, Acc(0), Acc(0));
      t1 += g;
      t2 += g * (load(a, i) - ma);
      t3 += g * (load(b, i) - mb);
    }
    s1[0] += t1;
    s2[0] += t2;
    s3[0] += t3;
  }
}

// da = g * ka1 + a * ka2 + ka3, db = g * kb1 + b * kb2 + kb3, g = dy where y > 0
template <typename T, typename Acc, bool kPerValue>
inline void grad_input_pair_segment(const T* __restrict dy, const T* __restrict y, const T* __restrict a,
                                    const T* __restrict b, T* __restrict da, T* __restrict db, int64_t len,
                                    const Acc* __restrict ka1, const Acc* __restrict ka2, const Acc* __restrict ka3,
                                    const Acc* __restrict kb1, const Acc* __restrict kb2,
                                    const Acc* __restrict kb3) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t c = kPerValue ? i : 0;
    const Acc g = masked<T, Acc, Mask::kFromY>(dy, y, nullptr, i, Acc(0), Acc(0));
    store(da, i, g * ka1[c] + load(a, i) * ka2[c] + ka3[c]);
    store(db, i, g * kb1[c] + load(b, i) * kb2[c] + kb3[c]);
  }
}

}  // namespace resnetlab_bn
