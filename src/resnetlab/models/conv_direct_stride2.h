// The stride-2 forms of conv_direct.cpp's kernels: a 3x3 convolution with stride 2 and padding 1
// from C to 2C channels (ResNet-20's 16 -> 32 and 32 -> 64 stage entries), fp32 channels_last,
// images of even height and width. On the 2-core Ice Lake Xeon oneDNN ran these layers' input
// gradients at 44-70 GMAC/s and weight gradients at ~56 (issue 18). Included by conv_direct.cpp
// inside its AVX-512 section (resnetlab/models/native.py hashes this header with it).
//
// Forward: each image is copied into a zero-bordered buffer; output pixel p of a row reads padded
// columns 2p, 2p + 1, 2p + 2, so an even column feeds two output pixels (taps 0 and 2) and an odd
// one feeds one (tap 1): each value is broadcast once for all of them (`block`, which the stride-1
// rows of conv_direct.cpp share).
// Input gradient, by output parity ("polyphase"): dx[2m + s][2n + t] collects dy[m + oi][n + oj]
// through the taps that reach it, one for an even row (oi 0, tap 1), two for an odd one (oi 0,
// tap 2; oi 1, tap 0), the same for columns: four small convolutions of dy, nine taps in all,
// none of them multiplying a zero.
// Weight gradient: per output pixel, its gradient vectors meet the input values its nine taps read.
#pragma once

namespace {

// A tile of P pixels x CV vectors of 16 channels in zmm registers: zeroed, and stored to pixels
// `stride` floats apart, where `add` is given with the values there (pixels `add_stride` apart)
// added: a block's shortcut gradient joins its input gradient as the kernel writes it, instead of
// a separate addition (and, at stride 2, a zero-filled gradient) over the whole tensor.
template <int P, int CV>
inline void zero_tile(__m512 (&acc)[P][CV]) {
#pragma GCC unroll 64
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) acc[p][v] = _mm512_setzero_ps();
}

template <int P, int CV>
inline void store_tile(const __m512 (&acc)[P][CV], float* out, long stride, const float* add = nullptr,
                       long add_stride = 0) {
  if (add != nullptr) {
#pragma GCC unroll 64
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v)
        _mm512_storeu_ps(out + p * stride + v * 16, _mm512_add_ps(acc[p][v], _mm512_loadu_ps(add + p * add_stride + v * 16)));
    return;
  }
#pragma GCC unroll 64
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) _mm512_storeu_ps(out + p * stride + v * 16, acc[p][v]);
}

// Copies one channels_last image (h x w x c) into the interior of a zero-bordered (h+2) x (w+2) x c
// buffer whose border is already zero (only the interior is ever written).
inline void copy_padded(const float* src, float* pad, int h, int w, int c) {
  for (int r = 0; r < h; ++r)
    std::copy(src + (long)r * w * c, src + (long)(r + 1) * w * c, pad + ((long)(r + 1) * (w + 2) + 1) * c);
}

// `pixels` channels_last pixels of c channels (a multiple of 16) copied from src to dst, or, where
// scale is given, the input of a convolution that follows a fused batch-norm + ReLU
// (models/bn_relu_conv.py): relu(src * scale + shift) per channel, by the batch-norm kernel's own
// arithmetic (one fused multiply-add, then the maximum with +0: fused_bn_passes.h), so the same bits.
inline void copy_normalised(const float* src, long pixels, int c, float* dst, const float* scale, const float* shift) {
  if (scale == nullptr) {
    std::copy(src, src + pixels * c, dst);
    return;
  }
  const __m512 zero = _mm512_setzero_ps();
  for (long p = 0; p < pixels; ++p)
    for (int v = 0; v < c; v += 16) {
      const __m512 z = _mm512_fmadd_ps(_mm512_loadu_ps(src + p * c + v), _mm512_loadu_ps(scale + v),
                                       _mm512_loadu_ps(shift + v));
      _mm512_storeu_ps(dst + p * c + v, _mm512_max_ps(z, zero));  // NaN and -0 give +0, as v > 0 ? v : 0
    }
}

// P output pixels x CV vectors of 16 output channels from CIN input channels at stride S, the
// forward kernel of both strides (conv_direct.cpp's rows at stride 1); pad points at the padded
// row and column of the block's first tap. Padded column q feeds output pixel p through tap
// dx = q - S * p: each input value is broadcast once for every tap that reads it (three at stride
// 1; at stride 2, two for an even column, one for an odd one). The conditions are compile-time.
// `add` (or nullptr): values of the output's layout added to the block's (store_tile).
template <int P, int CV, int CIN, int S>
inline void block(const float* pad, int pad_w, const float* wpk, float* out, const float* add = nullptr) {
  constexpr int cout = CV * 16;
  __m512 acc[P][CV];
  zero_tile(acc);
  for (int dy = 0; dy < 3; ++dy) {
    const float* in = pad + (long)dy * pad_w * CIN;
    const float* w = wpk + (long)(dy * 3) * CIN * cout;
    for (int ci = 0; ci < CIN; ++ci) {
      __m512 wv[3][CV];
#pragma GCC unroll 3
      for (int dx = 0; dx < 3; ++dx)
#pragma GCC unroll 8
        for (int v = 0; v < CV; ++v) wv[dx][v] = _mm512_loadu_ps(w + ((long)dx * CIN + ci) * cout + v * 16);
#pragma GCC unroll 64
      for (int q = 0; q < S * (P - 1) + 3; ++q) {
        const __m512 b = _mm512_set1_ps(in[(long)q * CIN + ci]);
#pragma GCC unroll 3
        for (int dx = 0; dx < 3; ++dx) {
          const int p = (q - dx) / S;
          if (q >= dx && (q - dx) % S == 0 && p < P) {
#pragma GCC unroll 8
            for (int v = 0; v < CV; ++v) acc[p][v] = _mm512_fmadd_ps(b, wv[dx][v], acc[p][v]);
          }
        }
      }
    }
  }
  store_tile(acc, out, cout, add, cout);
}

// x (n, h, w, CIN) -> y (n, h/2, w/2, CV*16); h and w even.
template <int P, int CV, int CIN>
void convolve_s2(const float* x, const float* wpk, float* y, long n, int h, int w) {
  constexpr int cout = CV * 16;
  const int pad_w = w + 2, ho = h / 2, wo = w / 2;
  const long image_in = (long)h * w * CIN, image_out = (long)ho * wo * cout;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad((long)(h + 2) * pad_w * CIN, 0.0f);
    for (int64_t i = begin; i < end; ++i) {
      copy_padded(x + i * image_in, pad.data(), h, w, CIN);
      for (int r = 0; r < ho; ++r) {
        const float* rows = pad.data() + (long)2 * r * pad_w * CIN;
        float* out = y + i * image_out + (long)r * wo * cout;
        int c = 0;
        for (; c + P <= wo; c += P) block<P, CV, CIN, 2>(rows + 2L * c * CIN, pad_w, wpk, out + (long)c * cout);
        for (; c + 2 <= wo; c += 2) block<2, CV, CIN, 2>(rows + 2L * c * CIN, pad_w, wpk, out + (long)c * cout);
        for (; c < wo; ++c) block<1, CV, CIN, 2>(rows + 2L * c * CIN, pad_w, wpk, out + (long)c * cout);
      }
    }
  });
}

// One parity (S, T) of the input gradient for P pixels of dx row 2m + S (columns 2n + T, n from the
// block's start), CV vectors of 16 input channels, K output channels. dpad points at dy[m][n] in a
// copy of dy with a zero row and column after its last; wpk is (9, K, C): per tap, per output
// channel, the row of input channels it reaches. `add`: the gradient of option A's shortcut at
// (m, n) (pixels K floats apart; its first C channels are x's at (2m, 2n)), for parity (0, 0) only.
template <int P, int CV, int S, int T>
inline void input_grad_phase(const float* dpad, int dpad_w, int k_channels, const float* wpk, float* out,
                             int out_pixel_stride, const float* add = nullptr) {
  constexpr int c = CV * 16, taps_r = S + 1, taps_c = T + 1;
  // (offset into dy, kernel tap) per row and per column: even -> (0, 1); odd -> (0, 2), (1, 0)
  constexpr int off_r[2] = {0, 1}, tap_r[2][2] = {{1, 1}, {2, 0}}, tap_c[2][2] = {{1, 1}, {2, 0}};
  __m512 acc[P][CV];
  zero_tile(acc);
  for (int k = 0; k < k_channels; ++k) {
#pragma GCC unroll 2
    for (int a = 0; a < taps_r; ++a) {
      const float* row = dpad + (long)off_r[a] * dpad_w * k_channels + k;
      __m512 wv[taps_c][CV];
#pragma GCC unroll 2
      for (int b = 0; b < taps_c; ++b)
#pragma GCC unroll 8
        for (int v = 0; v < CV; ++v)
          wv[b][v] = _mm512_loadu_ps(wpk + ((long)(tap_r[S][a] * 3 + tap_c[T][b]) * k_channels + k) * c + v * 16);
#pragma GCC unroll 64
      for (int q = 0; q < P + T; ++q) {  // dy column n + q reaches pixel q (tap b 0) and q - 1 (tap b 1)
        const __m512 g = _mm512_set1_ps(row[(long)q * k_channels]);
#pragma GCC unroll 2
        for (int b = 0; b < taps_c; ++b) {
          const int p = q - off_r[b];
          if (p >= 0 && p < P) {
#pragma GCC unroll 8
            for (int v = 0; v < CV; ++v) acc[p][v] = _mm512_fmadd_ps(g, wv[b][v], acc[p][v]);
          }
        }
      }
    }
  }
  store_tile(acc, out, out_pixel_stride, add, k_channels);
}

// `add`: the shortcut gradient's row m (or nullptr), added at parity (0, 0).
template <int P, int CV, int S, int T>
void input_grad_row(const float* dpad, int dpad_w, int wo, int k_channels, const float* wpk, float* out,
                    const float* add) {
  constexpr int c = CV * 16;
  auto at = [&](int n) { return S == 0 && T == 0 && add != nullptr ? add + (long)n * k_channels : nullptr; };
  int n = 0;  // dx column 2n + T: pixels 2 apart
  for (; n + P <= wo; n += P)
    input_grad_phase<P, CV, S, T>(dpad + (long)n * k_channels, dpad_w, k_channels, wpk, out + (2L * n + T) * c, 2 * c,
                                  at(n));
  for (; n + 2 <= wo; n += 2)
    input_grad_phase<2, CV, S, T>(dpad + (long)n * k_channels, dpad_w, k_channels, wpk, out + (2L * n + T) * c, 2 * c,
                                  at(n));
  for (; n < wo; ++n)
    input_grad_phase<1, CV, S, T>(dpad + (long)n * k_channels, dpad_w, k_channels, wpk, out + (2L * n + T) * c, 2 * c,
                                  at(n));
}

// dy (n, h/2, w/2, K) -> dx (n, h, w, CV*16), weights (9, K, C); plus, where shortcut_grad (dy's
// shape) is given, the gradient of option A's shortcut: its first C channels at dx's even pixels.
template <int P, int CV>
void input_grad_s2(const float* dy, const float* wpk, float* dx, long n, int h, int w, int k_channels,
                   const float* shortcut_grad) {
  constexpr int c = CV * 16;
  const int ho = h / 2, wo = w / 2, dpad_w = wo + 1;
  const long image_in = (long)ho * wo * k_channels, image_out = (long)h * w * c;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // dy with a zero row and column after its last (odd rows and columns reach one past them)
    std::vector<float> dpad((long)(ho + 1) * dpad_w * k_channels, 0.0f);
    for (int64_t i = begin; i < end; ++i) {
      const float* src = dy + i * image_in;
      for (int r = 0; r < ho; ++r)
        std::copy(src + (long)r * wo * k_channels, src + (long)(r + 1) * wo * k_channels,
                  dpad.data() + (long)r * dpad_w * k_channels);
      for (int m = 0; m < ho; ++m) {
        const float* rows = dpad.data() + (long)m * dpad_w * k_channels;
        const float* add = shortcut_grad != nullptr ? shortcut_grad + i * image_in + (long)m * wo * k_channels : nullptr;
        float* even = dx + i * image_out + (2L * m) * w * c;
        float* odd = even + (long)w * c;
        input_grad_row<P, CV, 0, 0>(rows, dpad_w, wo, k_channels, wpk, even, add);
        input_grad_row<P, CV, 0, 1>(rows, dpad_w, wo, k_channels, wpk, even, nullptr);
        input_grad_row<P, CV, 1, 0>(rows, dpad_w, wo, k_channels, wpk, odd, nullptr);
        input_grad_row<P, CV, 1, 1>(rows, dpad_w, wo, k_channels, wpk, odd, nullptr);
      }
    }
  });
}

// Weight gradient of one padded image (xpad: (2*ho + 2) x (2*wo + 2) x cin) for vertical tap ty and
// CB input channels from c0, added to acc ([ty][c][tx][k] floats): per output pixel, its KV
// gradient vectors meet the values its three horizontal taps read.
template <int CB, int KV>
void weight_grad_image_s2(const float* xpad, const float* dy, int ho, int wo, int cin, int ty, int c0, float* acc) {
  constexpr int cout = KV * 16;
  const int pad_w = 2 * wo + 2;
  __m512 a[CB][3][KV];
#pragma GCC unroll 64
  for (int c = 0; c < CB; ++c)
    for (int t = 0; t < 3; ++t)
      for (int v = 0; v < KV; ++v) a[c][t][v] = _mm512_setzero_ps();
  for (int r = 0; r < ho; ++r) {
    const float* xrow = xpad + (long)(2 * r + ty) * pad_w * cin + c0;
    const float* grow = dy + (long)r * wo * cout;
    for (int q = 0; q < wo; ++q) {
      __m512 g[KV];
#pragma GCC unroll 8
      for (int v = 0; v < KV; ++v) g[v] = _mm512_loadu_ps(grow + (long)q * cout + v * 16);
#pragma GCC unroll 64
      for (int c = 0; c < CB; ++c)
#pragma GCC unroll 3
        for (int t = 0; t < 3; ++t) {
          const __m512 b = _mm512_set1_ps(xrow[(long)(2 * q + t) * cin + c]);
#pragma GCC unroll 8
          for (int v = 0; v < KV; ++v) a[c][t][v] = _mm512_fmadd_ps(b, g[v], a[c][t][v]);
        }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int t = 0; t < 3; ++t)
      for (int v = 0; v < KV; ++v) {
        float* to = acc + (((long)ty * cin + c0 + c) * 3 + t) * cout + v * 16;
        _mm512_storeu_ps(to, _mm512_add_ps(_mm512_loadu_ps(to), a[c][t][v]));
      }
}

}  // namespace
