// An fp32 3x3 convolution (stride 1, padding 1, no bias, channels in = out = 16, 32, 48 or 64, or
// the CIFAR ResNets' first layer, 3 -> 16) of channels_last CPU tensors with AVX-512, for fp32
// training on CPUs without fast bf16 (built on first use by resnetlab/models/conv_direct.py, with
// -march=native). The same kernel gives the input gradient: the convolution of the output gradient
// with the weights' channel axes swapped and both spatial axes flipped; a second kernel
// (weight_grad, conv_direct_weight_grad.h) the weight gradient at 16 and 32 output channels. Why:
// on a 2-core Ice Lake Xeon oneDNN ran ResNet-20's 16-channel layers at 50-68 GMAC/s of an fp32
// peak over 150 (issue 18). The stride-2 forms (16 -> 32 and 32 -> 64 channels, all three passes)
// are in conv_direct_stride2.h; the entry points below take both. At stride 1 the forward pass and
// the weight gradient can also read a fused batch-norm's input and apply it (and ReLU) as they copy
// it in (models/bn_relu_conv.py), so that the normalised tensor is never stored.
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

#include <algorithm>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>

#include "conv_direct_stride2.h"
#include "conv_direct_weight_grad.h"

namespace {

// One output row: blocks of P pixels, the rest in blocks of 4, 2 and 1; `add` (or nullptr): the
// row of a tensor of the output's shape added to it as it is written.
template <int P, int CV, int CIN>
void row(const float* pad, int pad_w, int width, const float* wpk, float* out, const float* add) {
  constexpr int cout = CV * 16, cin = CIN;
  auto at = [&](int x) { return add != nullptr ? add + (long)x * cout : nullptr; };
  int x = 0;
  for (; x + P <= width; x += P) block<P, CV, cin, 1>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout, at(x));
  for (; x + 4 <= width; x += 4) block<4, CV, cin, 1>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout, at(x));
  for (; x + 2 <= width; x += 2) block<2, CV, cin, 1>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout, at(x));
  for (; x < width; ++x) block<1, CV, cin, 1>(pad + (long)x * cin, pad_w, wpk, out + (long)x * cout, at(x));
}

// y = conv(x) (+ add, a tensor of y's shape, where given); with scale and shift, conv(relu(x * scale +
// shift)), x a fused batch-norm's input (copy_normalised).
template <int P, int CV, int CIN = CV * 16>
void convolve(const float* x, const float* wpk, float* y, long n, int h, int w, const float* add,
              const float* scale, const float* shift) {
  constexpr int cin = CIN;
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
      copy_normalised(src, w, cin, pad.data() + ((long)pad_w + 1) * cin, scale, shift);
      for (int r = 0; r < h; ++r) {
        if (r + 1 < h)
          copy_normalised(src + (r + 1) * row_in, w, cin, pad.data() + ((long)(r + 2) * pad_w + 1) * cin, scale, shift);
        const float* ahead = r + 2 < h ? src + (r + 2) * row_in : (i + 1 < end ? src + image_in : nullptr);
        if (ahead != nullptr)
          for (long b = 0; b < row_in; b += 16) _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T0);
        const long at = i * image_out + (long)r * w * CV * 16;
        row<P, CV, CIN>(pad.data() + (long)r * pad_w * cin, pad_w, w, wpk, dst + (long)r * w * CV * 16,
                   add != nullptr ? add + at : nullptr);
      }
    }
  });
}


}  // namespace

static void check_fp32_channels_last(const char* what, const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.is_cpu() && b.is_cpu(), what, ": its tensors must be CPU tensors");
  TORCH_CHECK(a.dim() == 4 && a.scalar_type() == torch::kFloat && a.is_contiguous(at::MemoryFormat::ChannelsLast),
              what, ": its images must be a 4-d channels_last fp32 tensor");
  TORCH_CHECK(b.scalar_type() == torch::kFloat && (b.dim() == 3 ? b.is_contiguous() : b.dim() == 4 &&
              b.is_contiguous(at::MemoryFormat::ChannelsLast)), what, ": its second tensor must be packed weights "
              "(9, C, K) or 4-d channels_last, fp32");
}

// The stride-2 layers the kernels have: C -> 2C for C = 16 or 32, even height and width.
static void check_stride2(const char* what, int cin, int cout, int h, int w) {
  TORCH_CHECK((cin == 16 && cout == 32) || (cin == 32 && cout == 64), what,
              ": at stride 2 channels must go 16 -> 32 or 32 -> 64, got ", cin, " -> ", cout);
  TORCH_CHECK(h % 2 == 0 && w % 2 == 0, what, ": at stride 2 height and width must be even, got ", h, "x", w);
}

// The per-channel scale and shift of a fused batch-norm whose output a stride-1 kernel reads (both or
// neither): fp32, contiguous, one value per input channel.
static const float* normalisation_of(const c10::optional<torch::Tensor>& scale, const c10::optional<torch::Tensor>& shift,
                                     int64_t channels, int64_t stride, const char* what) {
  TORCH_CHECK(scale.has_value() == shift.has_value(), what, ": give the batch-norm's scale and shift together");
  if (!scale.has_value()) return nullptr;
  TORCH_CHECK(stride == 1 && channels % 16 == 0, what, ": normalises its input at stride 1 only, of a multiple of "
              "16 channels");
  for (const torch::Tensor* t : {&*scale, &*shift})
    TORCH_CHECK(t->is_cpu() && t->scalar_type() == torch::kFloat && t->dim() == 1 && t->numel() == channels &&
                t->is_contiguous(), what, ": scale and shift must be contiguous fp32 CPU vectors of ", channels,
                " values (one per input channel)");
  return scale->data_ptr<float>();
}

// A tensor added to a kernel's result as it is written: fp32, channels_last, the result's shape.
static const float* addend_of(const c10::optional<torch::Tensor>& add, const torch::Tensor& like, const char* what) {
  if (!add.has_value()) return nullptr;
  TORCH_CHECK(add->is_cpu() && add->scalar_type() == torch::kFloat && add->sizes() == like.sizes() &&
              add->is_contiguous(at::MemoryFormat::ChannelsLast), what, ": the tensor to add must be an fp32 "
              "channels_last CPU tensor of shape ", like.sizes(), ", got ", add->sizes());
  return add->data_ptr<float>();
}

// x: (N, C, H, W) channels_last fp32; packed: (9, C, K) fp32, [tap][in][out] (conv_direct.packed);
// -> (N, K, H / stride, W / stride) channels_last. Stride 1: C = K; stride 2: see check_stride2.
// add (stride 1 only): a tensor of the result's shape added to it as it is written; scale, shift
// (stride 1 only): the convolution of relu(x * scale + shift) (normalisation_of).
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& packed, int64_t stride,
                      const c10::optional<torch::Tensor>& add, const c10::optional<torch::Tensor>& scale,
                      const c10::optional<torch::Tensor>& shift) {
  check_fp32_channels_last("conv3x3", x, packed);
  TORCH_CHECK(packed.dim() == 3 && packed.size(0) == 9 && packed.size(1) == x.size(1),
              "conv3x3: packed weights must be (9, Cin, Cout)");
  const long n = x.size(0);
  const int cin = x.size(1), h = x.size(2), w = x.size(3), cout = packed.size(2);
  TORCH_CHECK(stride == 1 || stride == 2, "conv3x3: stride must be 1 or 2, got ", stride);
  if (stride == 1) {
    TORCH_CHECK(cin == cout || (cin == 3 && cout == 16), "conv3x3: input and output channels must be equal "
                "(or 3 -> 16, the CIFAR ResNets' first layer), got ", cin, " and ", cout);
    TORCH_CHECK(cout == 16 || cout == 32 || cout == 48 || cout == 64,
                "conv3x3: output channels must be 16, 32, 48 or 64, got ", cout);
  } else {
    check_stride2("conv3x3", cin, cout, h, w);
  }
  auto y = torch::empty({n, cout, h / stride, w / stride}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  TORCH_CHECK(stride == 1 || !add.has_value(), "conv3x3: adds a tensor at stride 1 only");
  const float* ap = addend_of(add, y, "conv3x3");
  const float* sp = normalisation_of(scale, shift, cin, stride, "conv3x3");
  const float* hp = sp != nullptr ? shift->data_ptr<float>() : nullptr;
  if (y.numel() == 0) return y;  // no pixels: nothing to read (the row copies assume at least one)
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (stride * 100 + cout + (cin == 3 ? 1000 : 0)) {
    case 1116: convolve<16, 1, 3>(xp, wp, yp, n, h, w, ap, nullptr, nullptr); break;
    case 116: convolve<16, 1>(xp, wp, yp, n, h, w, ap, sp, hp); break;
    case 132: convolve<8, 2>(xp, wp, yp, n, h, w, ap, sp, hp); break;
    case 148: convolve<4, 3>(xp, wp, yp, n, h, w, ap, sp, hp); break;
    case 164: convolve<4, 4>(xp, wp, yp, n, h, w, ap, sp, hp); break;
    case 232: convolve_s2<8, 2, 16>(xp, wp, yp, n, h, w); break;
    case 264: convolve_s2<4, 4, 32>(xp, wp, yp, n, h, w); break;
  }
  return y;
}

// dy: (N, K, H/2, W/2) channels_last fp32, weights: (9, K, C) fp32 ([tap][out][in],
// conv_direct.packed_for_strided_input_grad) -> dx (N, C, H, W) channels_last of a stride-2 conv3x3;
// shortcut_grad (dy's shape): the gradient of option A's shortcut from the same x, whose first C
// channels are added at dx's even pixels.
torch::Tensor conv3x3_input_grad_s2(const torch::Tensor& dy, const torch::Tensor& weights,
                                    const c10::optional<torch::Tensor>& shortcut_grad) {
  check_fp32_channels_last("conv3x3_input_grad_s2", dy, weights);
  TORCH_CHECK(weights.dim() == 3 && weights.size(0) == 9 && weights.size(1) == dy.size(1),
              "conv3x3_input_grad_s2: weights must be (9, K, C)");
  const long n = dy.size(0);
  const int k = dy.size(1), c = weights.size(2), h = 2 * dy.size(2), w = 2 * dy.size(3);
  check_stride2("conv3x3_input_grad_s2", c, k, h, w);
  auto dx = torch::empty({n, c, h, w}, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* sp = addend_of(shortcut_grad, dy, "conv3x3_input_grad_s2");
  if (dx.numel() == 0) return dx;
  if (c == 16) input_grad_s2<8, 1>(dy.data_ptr<float>(), weights.data_ptr<float>(), dx.data_ptr<float>(), n, h, w, k, sp);
  else input_grad_s2<8, 2>(dy.data_ptr<float>(), weights.data_ptr<float>(), dx.data_ptr<float>(), n, h, w, k, sp);
  return dx;
}

// x: (N, C, H, W), dy: (N, K, H / stride, W / stride), both channels_last fp32 -> dW: (K, C, 3, 3)
// fp32, contiguous; with scale and shift (stride 1), the weight gradient of conv3x3's normalised form.
torch::Tensor conv3x3_weight_grad(const torch::Tensor& x, const torch::Tensor& dy, int64_t stride,
                                  const c10::optional<torch::Tensor>& scale, const c10::optional<torch::Tensor>& shift) {
  check_fp32_channels_last("conv3x3_weight_grad", x, dy);
  TORCH_CHECK(dy.dim() == 4, "conv3x3_weight_grad: dy must be 4-d");
  TORCH_CHECK(stride == 1 || stride == 2, "conv3x3_weight_grad: stride must be 1 or 2, got ", stride);
  TORCH_CHECK(x.size(0) == dy.size(0) && x.size(2) / stride == dy.size(2) && x.size(3) / stride == dy.size(3),
              "conv3x3_weight_grad: dy must have x's images, and its pixels at the stride");
  const long n = x.size(0);
  const int cin = x.size(1), h = x.size(2), w = x.size(3), cout = dy.size(1);
  if (stride == 1) {
    TORCH_CHECK((cout == 16 && cin % 8 == 0) || (cout == 32 && cin % 4 == 0),
                "conv3x3_weight_grad: needs 16 output channels and input channels a multiple of 8, or 32 and "
                "a multiple of 4; got ", cout, " and ", cin);
  } else {
    check_stride2("conv3x3_weight_grad", cin, cout, h, w);
  }
  const float* sp = normalisation_of(scale, shift, cin, stride, "conv3x3_weight_grad");
  const float* hp = sp != nullptr ? shift->data_ptr<float>() : nullptr;
  if (n * h * w == 0) return torch::zeros({cout, cin, 3, 3}, torch::kFloat32);
  const float* xp = x.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  if (stride == 2)
    return cout == 32 ? weight_grad<4, 2, 2>(xp, gp, n, cin, h, w, sp, hp) : weight_grad<2, 4, 2>(xp, gp, n, cin, h, w, sp, hp);
  return cout == 16 ? weight_grad<8, 1, 1>(xp, gp, n, cin, h, w, sp, hp) : weight_grad<4, 2, 1>(xp, gp, n, cin, h, w, sp, hp);
}

constexpr bool kBuilt = true;
#else
torch::Tensor conv3x3(const torch::Tensor&, const torch::Tensor&, int64_t, const c10::optional<torch::Tensor>&,
                      const c10::optional<torch::Tensor>&, const c10::optional<torch::Tensor>&) {
  TORCH_CHECK(false, "conv3x3: built without AVX-512");
}
torch::Tensor conv3x3_input_grad_s2(const torch::Tensor&, const torch::Tensor&, const c10::optional<torch::Tensor>&) {
  TORCH_CHECK(false, "conv3x3_input_grad_s2: built without AVX-512");
}
torch::Tensor conv3x3_weight_grad(const torch::Tensor&, const torch::Tensor&, int64_t, const c10::optional<torch::Tensor>&,
                                  const c10::optional<torch::Tensor>&) {
  TORCH_CHECK(false, "conv3x3_weight_grad: built without AVX-512");
}
constexpr bool kBuilt = false;
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv3x3", &conv3x3, "3x3 padding-1 convolution, stride 1 or 2, fp32 channels_last, packed weights",
        py::arg("x"), py::arg("packed"), py::arg("stride") = 1, py::arg("add") = py::none(),
        py::arg("scale") = py::none(), py::arg("shift") = py::none());
  m.def("conv3x3_input_grad_s2", &conv3x3_input_grad_s2, "the input gradient of a stride-2 conv3x3",
        py::arg("dy"), py::arg("weights"), py::arg("shortcut_grad") = py::none());
  m.def("conv3x3_weight_grad", &conv3x3_weight_grad, "its weight gradient, fp32 channels_last x and dy",
        py::arg("x"), py::arg("dy"), py::arg("stride") = 1, py::arg("scale") = py::none(), py::arg("shift") = py::none());
  m.attr("built") = kBuilt;
}
