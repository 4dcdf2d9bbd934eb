// The weight gradient of conv_direct.cpp's 3x3 kernels at stride 1 and 2 (16 and 32 output channels at
// stride 1; the stride-2 image pass is conv_direct_stride2.h's). Included by conv_direct.cpp inside
// its AVX-512 section (resnetlab/models/native.py hashes this header with it).
#pragma once

namespace {

// Weight gradient, dW[k][c][ty][tx] = sum over images and output pixels (h, q) of
// dy[h][q][k] * x[h + ty - 1][q + tx - 1][c], for one image, one vertical tap ty and CB input
// channels from c0, added to acc ([ty][c][tx][k] floats). Along each row pair (x row h + ty - 1,
// dy row h) the input pixel p advances one at a time: each x value is broadcast once and meets the
// output gradients of the three output pixels that read it (p + 1, p, p - 1 for tx = 0, 1, 2),
// kept in a window of registers that slides with p. CB x 3 x KV accumulators stay in registers
// for the whole image.
template <int CB, int KV>
void weight_grad_image(const float* x, const float* dy, int h, int w, int cin, int ty, int c0, float* acc) {
  constexpr int cout = KV * 16;
  __m512 a[CB][3][KV];
#pragma GCC unroll 64
  for (int c = 0; c < CB; ++c)
    for (int t = 0; t < 3; ++t)
      for (int v = 0; v < KV; ++v) a[c][t][v] = _mm512_setzero_ps();
  for (int r = std::max(0, 1 - ty); r < std::min(h, h + 1 - ty); ++r) {
    const float* xrow = x + (long)(r + ty - 1) * w * cin + c0;
    const float* grow = dy + (long)r * w * cout;
    __m512 prev[KV], cur[KV], next[KV];
#pragma GCC unroll 8
    for (int v = 0; v < KV; ++v) prev[v] = _mm512_setzero_ps(), cur[v] = _mm512_loadu_ps(grow + v * 16);
    for (int p = 0; p < w; ++p) {
#pragma GCC unroll 8
      for (int v = 0; v < KV; ++v) next[v] = p + 1 < w ? _mm512_loadu_ps(grow + (long)(p + 1) * cout + v * 16)
                                                       : _mm512_setzero_ps();
#pragma GCC unroll 64
      for (int c = 0; c < CB; ++c) {
        const __m512 b = _mm512_set1_ps(xrow[(long)p * cin + c]);
#pragma GCC unroll 8
        for (int v = 0; v < KV; ++v) {
          a[c][0][v] = _mm512_fmadd_ps(b, next[v], a[c][0][v]);
          a[c][1][v] = _mm512_fmadd_ps(b, cur[v], a[c][1][v]);
          a[c][2][v] = _mm512_fmadd_ps(b, prev[v], a[c][2][v]);
        }
      }
#pragma GCC unroll 8
      for (int v = 0; v < KV; ++v) prev[v] = cur[v], cur[v] = next[v];
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int t = 0; t < 3; ++t)
      for (int v = 0; v < KV; ++v) {
        float* to = acc + (((long)ty * cin + c0 + c) * 3 + t) * cout + v * 16;
        _mm512_storeu_ps(to, _mm512_add_ps(_mm512_loadu_ps(to), a[c][t][v]));
      }
}

// Images split into one contiguous chunk per thread, each summed into its own buffer; the buffers
// are then added in thread order, so a given thread count always gives the same bits.
// scale, shift (stride 1 only; or nullptr): x is the input of a fused batch-norm + ReLU, whose
// output the convolution read (copy_normalised); each image's is made again in a buffer here.
template <int CB, int KV, int S>
torch::Tensor weight_grad(const float* x, const float* dy, long n, int cin, int h, int w, const float* scale,
                          const float* shift) {
  constexpr int cout = KV * 16;
  const long per_thread = 9L * cin * cout, image_in = (long)h * w * cin, image_out = (long)(h / S) * (w / S) * cout;
  const int threads = std::max<long>(1, std::min<long>(at::get_num_threads(), n));
  std::vector<float> sums(per_thread * threads, 0.0f);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(S == 2 ? (long)(h + 2) * (w + 2) * cin : 0, 0.0f);  // stride 2 reads a padded copy
    std::vector<float> normalised(scale != nullptr ? image_in : 0);
    for (int64_t t = begin; t < end; ++t)
      for (long i = n * t / threads; i < n * (t + 1) / threads; ++i) {
        const float* image = x + i * image_in;
        if constexpr (S == 2) copy_padded(image, pad.data(), h, w, cin);
        if (scale != nullptr) {
          copy_normalised(image, (long)h * w, cin, normalised.data(), scale, shift);
          image = normalised.data();
        }
        for (int ty = 0; ty < 3; ++ty)
          for (int c0 = 0; c0 < cin; c0 += CB) {
            float* acc = sums.data() + t * per_thread;
            if constexpr (S == 1) weight_grad_image<CB, KV>(image, dy + i * image_out, h, w, cin, ty, c0, acc);
            else weight_grad_image_s2<CB, KV>(pad.data(), dy + i * image_out, h / 2, w / 2, cin, ty, c0, acc);
          }
      }
  });
  auto out = torch::empty({cout, cin, 3, 3}, torch::kFloat32);  // [k][c][ty][tx]
  float* o = out.data_ptr<float>();
  at::parallel_for(0, cin, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int ty = 0; ty < 3; ++ty)
        for (int tx = 0; tx < 3; ++tx)
          for (int k = 0; k < cout; ++k) {
            const long at = ((ty * (long)cin + c) * 3 + tx) * cout + k;
            float sum = 0.0f;
            for (int t = 0; t < threads; ++t) sum += sums[t * per_thread + at];
            o[((long)k * cin + c) * 9 + ty * 3 + tx] = sum;
          }
  });
  return out;
}

}  // namespace
