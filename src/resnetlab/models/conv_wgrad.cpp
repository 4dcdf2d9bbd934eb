// Weight gradient of a 3x3, stride-1, pad-1 convolution of bf16 channels_last tensors, on AMX
// tiles (conv_wgrad_amx.h) or, on CPUs without AMX, with AVX-512 BF16 (conv_wgrad_avx512.h). Built
// on first use by resnetlab/models/conv_wgrad.py, with -march=native, on CPUs that have either.
//
//   dW[k][c][i][j] = sum over images n and output pixels (h, w) of g[n][h][w][k] * x[n][h+i-1][w+j-1][c]
//
// oneDNN computes this as one long, skinny reduction (over N*H*W) whose operands it first
// reorders; on a 2-core AMX Xeon it ran at 80-230 GMAC/s, 1.2-3.6x slower than the same layer's
// forward pass. Here the reduction runs over 32 images at a time, pixel by pixel, so no operand
// needs an im2col: per block of 32 images and band of rows, two small buffers that fit in L2 are
// filled once and every one of the 9 kernel taps is an offset into the input buffer:
//   A: per output pixel and 16 output channels, g transposed to 16 (k) x 32 (images) bf16;
//   B: per padded input pixel and 16 input channels, 16 image pairs x 16 channels x 2 (pairs
//      interleaved, the layout both TDPBF16PS and VDPBF16PS multiply pair by pair).
// Products are summed in fp32 (oneDNN rounds dW to bf16; this returns fp32).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>  // the AMX half asks the OS for tile registers
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kTile = 1024;  // bytes in a 16-row x 64-byte tile (A, B and C alike)

// One band's operands, as the microkernels see them.
struct Band {
  float* acc;  // the thread's sums, [tap][kt][ct][16 k][16 c], fp32
  int KT, CT, cols, kt0, kt1, steps;  // columns: tap * CT + ct; steps: the band's output pixels
  const char* a;  // A tiles: [step][kt - kt0][16 k][32 images]
  int64_t a_step;  // bytes from one step's A tiles to the next
  const char* const* bptr;  // B tile of column col at step s: bptr[col * steps_max + s]
  int steps_max;

  float* c(int kt, int col) const { return acc + ((int64_t(col / CT) * KT + kt) * CT + col % CT) * 256; }
  const char* a_tile(int kt) const { return a + int64_t(kt - kt0) * kTile; }
  const char* const* b(int col) const { return bptr + int64_t(col) * steps_max; }
};

#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
#include "conv_wgrad_amx.h"
#elif defined(__AVX512BF16__)
#include "conv_wgrad_avx512.h"
#else
#error "conv_wgrad.cpp needs AMX (amx_bf16) or AVX-512 BF16"
#endif

// 16 x 16 transpose of 32-bit elements, one row per register.
void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
  }
}

struct Problem {
  int64_t n, c, h, w, k;
  const uint16_t* x;  // bf16 bits, (N, H, W, C)
  const uint16_t* g;  // bf16 bits, (N, H, W, K)
};

// 16 channels [ch, ch + 16) of images (n, n + 1) at pixel (h, w), interleaved: (a0, b0, a1, b1, ...).
// Images past the batch and pixels in the padding read as zeros.
inline __m512i image_pair(const uint16_t* t, int64_t channels, const Problem& p, int64_t n, int64_t h, int64_t w,
                          int64_t ch) {
  static const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                     23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const bool inside = h >= 0 && h < p.h && w >= 0 && w < p.w;
  auto row = [&](int64_t i) {
    return inside && i < p.n ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + ((i * p.h + h) * p.w + w) * channels + ch))
                             : _mm256_setzero_si256();
  };
  return _mm512_permutexvar_epi16(interleave, _mm512_inserti64x4(_mm512_castsi256_si512(row(n)), row(n + 1), 1));
}

// Fill A for output rows [h0, h0 + rows) and output-channel tiles [kt0, kt1) of images [n0, n0 + 32).
void fill_a(char* a, const Problem& p, int64_t n0, int64_t h0, int rows, int kt0, int kt1) {
  const int64_t kts = kt1 - kt0;
  for (int r = 0; r < rows; ++r)
    for (int64_t w = 0; w < p.w; ++w)
      for (int kt = kt0; kt < kt1; ++kt) {
        __m512i v[16];
        for (int i = 0; i < 16; ++i) v[i] = image_pair(p.g, p.k, p, n0 + 2 * i, h0 + r, w, kt * 16);
        transpose16(v);  // row k: its 16 image pairs, i.e. the 32 images in order
        char* dst = a + ((r * p.w + w) * kts + (kt - kt0)) * kTile;
        for (int i = 0; i < 16; ++i) _mm512_store_si512(reinterpret_cast<__m512i*>(dst + 64 * i), v[i]);
      }
}

// Fill B for padded input rows h0 - 1 .. h0 + rows (all columns, zeros in the padding).
void fill_b(char* b, const Problem& p, int64_t n0, int64_t h0, int rows) {
  const int64_t cts = p.c / 16, wp = p.w + 2;
  for (int r = 0; r < rows + 2; ++r)
    for (int64_t col = 0; col < wp; ++col)
      for (int64_t ct = 0; ct < cts; ++ct) {
        char* dst = b + ((r * wp + col) * cts + ct) * kTile;
        for (int i = 0; i < 16; ++i)
          _mm512_store_si512(reinterpret_cast<__m512i*>(dst + 64 * i),
                             image_pair(p.x, p.c, p, n0 + 2 * i, h0 - 1 + r, col - 1, ct * 16));
      }
}

}  // namespace

// x: (N, C, H, W), g: (N, K, H, W), both bf16 channels_last, C and K multiples of 16.
// Returns dW: (K, C, 3, 3) fp32.
torch::Tensor conv3x3_weight_grad(const torch::Tensor& x, const torch::Tensor& g) {
  TORCH_CHECK(kernel_ready(), "conv3x3_weight_grad: ", kNotReady);
  TORCH_CHECK(x.dim() == 4 && g.dim() == 4 && x.scalar_type() == at::kBFloat16 && g.scalar_type() == at::kBFloat16,
              "conv3x3_weight_grad: expected 4-D bf16 tensors");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast) && g.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv3x3_weight_grad: expected channels_last tensors");
  const Problem p{x.size(0), x.size(1), x.size(2), x.size(3), g.size(1),
                  reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                  reinterpret_cast<const uint16_t*>(g.data_ptr<at::BFloat16>())};
  TORCH_CHECK(g.size(0) == p.n && g.size(2) == p.h && g.size(3) == p.w, "conv3x3_weight_grad: x and g differ in shape");
  TORCH_CHECK(p.c % 16 == 0 && p.k % 16 == 0, "conv3x3_weight_grad: channels must be multiples of 16");
  const int CT = p.c / 16, KT = p.k / 16, cols = 9 * CT;
  const int threads = std::max(1, at::get_num_threads());
  // Wide layers split the output channels between the threads (no partial sums to add, the
  // accumulators of a 512-channel layer are 9 MB); narrow ones split the images.
  const bool split_k = KT >= 4 * threads;
  const int64_t blocks = (p.n + 31) / 32;
  const int64_t per_row = (p.w * (split_k ? KT / threads + 1 : KT) + (p.w + 2) * CT) * kTile;
  const int band = static_cast<int>(std::clamp<int64_t>(kBandBytes / per_row, 1, p.h));
  const int64_t bands = (p.h + band - 1) / band;
  const int64_t acc_floats = int64_t(9) * KT * CT * 256;  // [tap][kt][ct][16 k][16 c]
  std::vector<float> acc((split_k ? 1 : threads) * acc_floats, 0.f);

#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const int kt0 = split_k ? int(int64_t(KT) * tid / nt) : 0, kt1 = split_k ? int(int64_t(KT) * (tid + 1) / nt) : KT;
    float* my = acc.data() + (split_k ? 0 : tid * acc_floats);
    const int kts = kt1 - kt0, steps_max = band * int(p.w);
    char* a = static_cast<char*>(std::aligned_alloc(64, std::max<int64_t>(1, int64_t(steps_max) * kts) * kTile));
    char* b = static_cast<char*>(std::aligned_alloc(64, (band + 2) * (p.w + 2) * CT * kTile));
    // B tile of column col (tap * CT + ct) at reduction step s (pixel s of the band): the same
    // offsets into this thread's buffer for every item, so the table is made once
    std::vector<const char*> bptr(int64_t(cols) * steps_max);
    for (int col = 0; col < cols; ++col) {
      const int i = col / CT / 3, j = col / CT % 3, ct = col % CT;
      for (int s = 0; s < steps_max; ++s)
        bptr[int64_t(col) * steps_max + s] = b + (((s / p.w + i) * (p.w + 2) + s % p.w + j) * CT + ct) * kTile;
    }
    const ThreadScope tiles;  // AMX: this thread's tile registers, configured
    const int64_t items = blocks * bands;
    // split_k: every thread walks every item for its own output channels; else items are shared out
    const int64_t first = split_k ? 0 : items * tid / nt, last = split_k ? items : items * (tid + 1) / nt;
    for (int64_t item = first; item < last && kts > 0; ++item) {
      const int64_t n0 = item / bands * 32, h0 = item % bands * band;
      const int rows = static_cast<int>(std::min<int64_t>(band, p.h - h0)), steps = rows * int(p.w);
      fill_a(a, p, n0, h0, rows, kt0, kt1);
      fill_b(b, p, n0, h0, rows);
      accumulate(Band{my, KT, CT, cols, kt0, kt1, steps, a, int64_t(kts) * kTile, bptr.data(), steps_max});
    }
    std::free(a);
    std::free(b);
  }

  // [tap][kt][ct][k][c] (summed over the threads' copies, in thread order) -> (K, C, 3, 3)
  auto out = torch::empty({p.k, p.c, 3, 3}, torch::kFloat32);
  float* o = out.data_ptr<float>();
  const int copies = split_k ? 1 : threads;
  at::parallel_for(0, KT, 1, [&](int64_t begin, int64_t end) {
    for (int64_t kt = begin; kt < end; ++kt)
      for (int tap = 0; tap < 9; ++tap)
        for (int ct = 0; ct < CT; ++ct)
          for (int k = 0; k < 16; ++k)
            for (int ch = 0; ch < 16; ++ch) {
              const int64_t at = ((int64_t(tap) * KT + kt) * CT + ct) * 256 + k * 16 + ch;
              float sum = 0.f;
              for (int t = 0; t < copies; ++t) sum += acc[t * acc_floats + at];
              o[((kt * 16 + k) * p.c + ct * 16 + ch) * 9 + tap] = sum;
            }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv3x3_weight_grad", &conv3x3_weight_grad, "3x3 stride-1 convolution weight gradient (bf16 in, fp32 out)");
  m.attr("kind") = kKind;  // which half was built: "AMX" or "AVX-512 BF16"
  m.def("ready", &kernel_ready, "whether the kernel can run in this process (AMX: the OS gave it tile registers)");
}
