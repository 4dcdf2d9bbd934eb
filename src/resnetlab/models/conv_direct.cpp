// An fp32 3x3 convolution (stride 1, padding 1, no bias, channels in = out = 16, 32, 48 or 64) of
// channels_last CPU tensors with AVX-512, for fp32 training on CPUs without fast bf16 (built on
// first use by resnetlab/models/conv_direct.py, with -march=native). The same kernel gives the
// input gradient: the convolution of the output gradient with the weights' channel axes swapped
// and both spatial axes flipped. Why: on a 2-core Ice Lake Xeon oneDNN ran ResNet-20's 16-channel
// layers at 50-68 GMAC/s of an fp32 peak over 150 (issue 18).
//
// Per image, the input is copied into a zero-bordered buffer ((H+2) x (W+2) x C floats, in L2),
// a row just before the first output row that needs it, so no border test is left in the inner
// loop. An output row is computed P pixels at a time, P x (C/16) accumulators in zmm registers.
// For each vertical tap and input channel the three horizontal taps' weight vectors are loaded,
// then each input value of the row is broadcast once and feeds the (up to) three FMAs of the taps
// that read it: on that Xeon an FMA with a broadcast memory operand ran at 57% of the register
// FMA rate, a broadcast register reused by two FMAs at 95%. Images are split over PyTorch's
// threads; each writes only its own images, so the result does not depend on the thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>

namespace {

// P output pixels x CV vectors of 16 output channels; a broadcast input value serves 3 * CV FMAs.
template <int P, int CV>
inline void block(const float* pad, int pad_w, const float* wpk, float* out) {
  constexpr int cout = CV * 16, cin = cout;
  __m512 acc[P][CV];
#pragma GCC unroll 64
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) acc[p][v] = _mm512_setzero_ps();
  for (int dy = 0; dy < 3; ++dy) {
    const float* in = pad + (long)dy * pad_w * cin;
    const float* w = wpk + (long)(dy * 3) * cin * cout;
    for (int ci = 0; ci < cin; ++ci) {
      __m512 wv[3][CV];
#pragma GCC unroll 3
      for (int dx = 0; dx < 3; ++dx)
#pragma GCC unroll 8
        for (int v = 0; v < CV; ++v) wv[dx][v] = _mm512_loadu_ps(w + ((long)dx * cin + ci) * cout + v * 16);
#pragma GCC unroll 64
      for (int q = 0; q < P + 2; ++q) {
        const __m512 b = _mm512_set1_ps(in[(long)q * cin + ci]);
#pragma GCC unroll 3
        for (int dx = 0; dx < 3; ++dx) {
          const int p = q - dx;
          if (p >= 0 && p < P) {
#pragma GCC unroll 8
            for (int v = 0; v < CV; ++v) acc[p][v] = _mm512_fmadd_ps(b, wv[dx][v], acc[p][v]);
          }
        }
      }
    }
  }
#pragma GCC unroll 64
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) _mm512_storeu_ps(out + (long)p * cout + v * 16, acc[p][v]);
}

// One output row: blocks of P pixels, the rest in blocks of 4, 2 and 1.
template <int P, int CV>
void row(const float* pad, int pad_w, int width, const float* wpk, float* out) {
  constexpr int cout = CV * 16, cin = cout;
  int x = 0;
  for (; x + P <= width; x += P) block<P, CV>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout);
  for (; x + 4 <= width; x += 4) block<4, CV>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout);
  for (; x + 2 <= width; x += 2) block<2, CV>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout);
  for (; x < width; ++x) block<1, CV>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout);
}

template <int P, int CV>
void convolve(const float* x, const float* wpk, float* y, long n, int h, int w) {
  constexpr int cin = CV * 16;
  const int pad_w = w + 2;
  const long image_in = (long)h * w * cin, image_out = (long)h * w * CV * 16, row_in = (long)w * cin;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // Only the pixels inside the border are ever written, so the border stays zero for every image.
    std::vector<float> pad((long)(h + 2) * pad_w * cin, 0.0f);
    for (int64_t i = begin; i < end; ++i) {
      const float* src = x + i * image_in;
      float* dst = y + i * image_out;
      // Rows are copied in just before the first output row that needs them, and the row after
      // is prefetched, so reading the input overlaps the arithmetic instead of preceding it.
      std::copy(src, src + row_in, pad.data() + ((long)pad_w + 1) * cin);
      for (int r = 0; r < h; ++r) {
        if (r + 1 < h)
          std::copy(src + (r + 1) * row_in, src + (r + 2) * row_in, pad.data() + ((long)(r + 2) * pad_w + 1) * cin);
        const float* ahead = r + 2 < h ? src + (r + 2) * row_in : (i + 1 < end ? src + image_in : nullptr);
        if (ahead != nullptr)
          for (long b = 0; b < row_in; b += 16) _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T0);
        row<P, CV>(pad.data() + (long)r * pad_w * cin, pad_w, w, wpk, dst + (long)r * w * CV * 16);
      }
    }
  });
}

}  // namespace

// x: (N, C, H, W) channels_last fp32; packed: (9, C, C) fp32, [tap][in][out] (conv_direct.packed);
// -> (N, C, H, W) channels_last.
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& packed) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv3x3: x must be a 4-d channels_last fp32 tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.size(0) == 9 && packed.size(1) == x.size(1) && packed.is_contiguous() &&
                  packed.scalar_type() == torch::kFloat,
              "conv3x3: packed weights must be (9, Cin, Cout) fp32");
  const long n = x.size(0);
  const int cin = x.size(1), h = x.size(2), w = x.size(3), cout = packed.size(2);
  TORCH_CHECK(cin == cout, "conv3x3: input and output channels must be equal, got ", cin, " and ", cout);
  auto y = torch::empty({n, cout, h, w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (cout) {
    case 16: convolve<16, 1>(xp, wp, yp, n, h, w); break;
    case 32: convolve<8, 2>(xp, wp, yp, n, h, w); break;
    case 48: convolve<4, 3>(xp, wp, yp, n, h, w); break;
    case 64: convolve<4, 4>(xp, wp, yp, n, h, w); break;
    default: TORCH_CHECK(false, "conv3x3: output channels must be 16, 32, 48 or 64, got ", cout);
  }
  return y;
}

constexpr bool kBuilt = true;
#else
torch::Tensor conv3x3(const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "conv3x3: built without AVX-512");
}
constexpr bool kBuilt = false;
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv3x3", &conv3x3, "3x3 stride-1 padding-1 convolution, fp32 channels_last, packed weights");
  m.attr("built") = kBuilt;
}
