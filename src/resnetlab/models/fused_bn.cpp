// Batch-norm (training) + ReLU (+ residual addition), forward and backward, in two passes over
// memory each way. Built on first use by resnetlab/models/fused_bn.py (torch.utils.cpp_extension).
//
// A tensor is either NCHW-contiguous (planes of H*W values per (n, c)) or channels_last
// (rows of C values per pixel); the caller makes every tensor of one call share x's layout.
// Sums are taken in the math type (fp32 for bf16/fp32, fp64 for fp64) over blocks of rows and
// gathered in fp64, one buffer per thread added up in thread order: deterministic for a given
// thread count, like PyTorch's own batch-norm.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <omp.h>

#include <algorithm>

#include <cstring>
#include <vector>

namespace {

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

Shape shape_of(const at::Tensor& x) {
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

template <typename T, typename Acc, bool kPerValue>
inline void grad_sums_segment(const T* __restrict dy, const T* __restrict y, const T* __restrict x, int64_t len,
                              const Acc* __restrict mean, Acc* __restrict s1, Acc* __restrict s2) {
  if constexpr (kPerValue) {
    for (int64_t c = 0; c < len; ++c) {
      const Acc d = load(dy, c), g = load(y, c) > Acc(0) ? d : Acc(0);
      s1[c] += g;
      s2[c] += g * (load(x, c) - mean[c]);
    }
  } else {
    const Acc m = mean[0];
    Acc a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < len; ++i) {
      const Acc d = load(dy, i), g = load(y, i) > Acc(0) ? d : Acc(0);
      a += g;
      b += g * (load(x, i) - m);
    }
    s1[0] += a;
    s2[0] += b;
  }
}

// y = relu(x * scale + shift (+ r))
template <typename T, typename Acc, bool kPerValue, bool kResidual>
inline void apply_segment(const T* __restrict x, const T* __restrict r, T* __restrict y, int64_t len,
                          const Acc* __restrict scale, const Acc* __restrict shift) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t c = kPerValue ? i : 0;
    Acc v = load(x, i) * scale[c] + shift[c];
    if constexpr (kResidual) v += load(r, i);
    store(y, i, v > Acc(0) ? v : Acc(0));
  }
}

// dx = g * k1 + x * k2 + k3 (and dr = g), g = dy where y > 0
template <typename T, typename Acc, bool kPerValue, bool kResidual>
inline void grad_input_segment(const T* __restrict dy, const T* __restrict y, const T* __restrict x,
                               T* __restrict dx, T* __restrict dr, int64_t len, const Acc* __restrict k1,
                               const Acc* __restrict k2, const Acc* __restrict k3) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t c = kPerValue ? i : 0;
    const Acc d = load(dy, i), g = load(y, i) > Acc(0) ? d : Acc(0);
    store(dx, i, g * k1[c] + load(x, i) * k2[c] + k3[c]);
    if constexpr (kResidual) store(dr, i, g);
  }
}

int64_t max_threads() { return std::max<int64_t>({at::get_num_threads(), omp_get_max_threads(), 1}); }

// A channels_last row holds only C values (16 in a CIFAR ResNet's first stage): too short a loop
// to vectorise well. So rows are taken k at a time, as one segment of k*C values whose channel
// parameters are repeated k times ("wide"); a chunk's last few rows go one at a time.
int64_t rows_per_segment(const Shape& s) { return s.channels_last ? std::max<int64_t>(1, 256 / s.c) : 1; }

template <typename Acc>
std::vector<Acc> wide(const std::vector<Acc>& per_channel, int64_t k) {
  std::vector<Acc> out(per_channel.size() * k);
  for (size_t i = 0; i < out.size(); ++i) out[i] = per_channel[i % per_channel.size()];
  return out;
}

// Per-channel sums of two quantities: `segment(offset, len, params, s1, s2)` adds the values of
// one segment into accumulators (channels_last: per value of a wide segment; NCHW: one for the
// plane's channel). Blocks are summed in Acc, gathered in fp64 per thread, and the threads added
// up in thread order. `params` are per channel, widened here for channels_last.
template <typename Acc, typename Segment>
void channel_sums(const Shape& s, const std::vector<Acc>& params, Segment segment, std::vector<double>& out1,
                  std::vector<double>& out2) {
  const int64_t C = s.c, threads = max_threads(), k = rows_per_segment(s);
  std::vector<double> part1(threads * C, 0.0), part2(threads * C, 0.0);
  if (s.channels_last) {
    const std::vector<Acc> wparams = wide(params, k);
    at::parallel_for(0, s.n * s.hw, kBlock, [&](int64_t begin, int64_t end) {
      double* p1 = part1.data() + at::get_thread_num() * C;
      double* p2 = part2.data() + at::get_thread_num() * C;
      std::vector<Acc> a1(k * C), a2(k * C);
      for (int64_t r0 = begin; r0 < end; r0 += kBlock * k) {
        std::fill(a1.begin(), a1.end(), Acc(0));
        std::fill(a2.begin(), a2.end(), Acc(0));
        const int64_t r1 = std::min(end, r0 + kBlock * k);
        int64_t r = r0;
        for (; r + k <= r1; r += k) segment(r * C, k * C, wparams.data(), a1.data(), a2.data());
        for (; r < r1; ++r) segment(r * C, C, wparams.data(), a1.data(), a2.data());
        for (int64_t j = 0; j < k * C; ++j) {
          p1[j % C] += a1[j];
          p2[j % C] += a2[j];
        }
      }
    });
  } else {
    const int64_t hw = s.hw;
    at::parallel_for(0, s.n * C, 1, [&](int64_t begin, int64_t end) {
      double* p1 = part1.data() + at::get_thread_num() * C;
      double* p2 = part2.data() + at::get_thread_num() * C;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        for (int64_t i = 0; i < hw; i += kBlock) {
          Acc a1 = 0, a2 = 0;
          segment(plane * hw + i, std::min(kBlock, hw - i), params.data() + c, &a1, &a2);
          p1[c] += a1;
          p2[c] += a2;
        }
      }
    });
  }
  out1.assign(C, 0.0);
  out2.assign(C, 0.0);
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t c = 0; c < C; ++c) {
      out1[c] += part1[t * C + c];
      out2[c] += part2[t * C + c];
    }
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

// Per-channel vectors are read and written through their data, not with tensor ops: a layer's
// dozen of them would otherwise cost more than a small layer's passes over memory.
at::Tensor per_channel(const std::vector<double>& v, at::ScalarType dtype) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, dtype, "fused_bn_per_channel", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(v[i]);
  });
  return t;
}

// buffer = (1 - momentum) * buffer + momentum * v, in place (running statistics).
void lerp_into(at::Tensor& buffer, const std::vector<double>& v, double momentum) {
  TORCH_CHECK(buffer.is_contiguous() && buffer.numel() == static_cast<int64_t>(v.size()), "fused batch-norm: bad running statistics");
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, buffer.scalar_type(), "fused_bn_lerp", [&] {
    scalar_t* p = buffer.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i)
      p[i] = static_cast<scalar_t>(static_cast<double>(p[i]) + momentum * (v[i] - static_cast<double>(p[i])));
  });
}

at::ScalarType math_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_like(const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() &&
                  shape_of(t).channels_last == shape_of(x).channels_last,
              "fused batch-norm: every tensor of a call must have x's shape, dtype and layout");
}

// Calls body(std::bool_constant<a>{}, std::bool_constant<b>{}) for the runtime flags a and b.
template <typename Body>
void with_flags(bool a, bool b, Body body) {
  if (a && b) body(std::true_type{}, std::true_type{});
  else if (a) body(std::true_type{}, std::false_type{});
  else if (b) body(std::false_type{}, std::true_type{});
  else body(std::false_type{}, std::false_type{});
}

std::vector<double> to_doubles(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<double> out(c.numel());
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, c.scalar_type(), "fused_bn_to_doubles", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
  });
  return out;
}

// y = relu(x * scale + shift (+ r)) over the whole tensor, scale and shift per channel.
template <typename T, typename Acc>
void apply_all(const Shape& s, const T* xp, const T* rp, T* yp, const std::vector<Acc>& scale,
               const std::vector<Acc>& shift) {
  with_flags(s.channels_last, rp != nullptr, [&](auto per_value, auto with_residual) {
    constexpr bool kPerValue = decltype(per_value)::value, kResidual = decltype(with_residual)::value;
    const int64_t k = kPerValue ? rows_per_segment(s) : 1;
    const std::vector<Acc> wscale = wide(scale, k), wshift = wide(shift, k);
    const Acc* scp = wscale.data();
    const Acc* shp = wshift.data();
    channel_map(s, [=](int64_t o, int64_t len, int64_t c) {
      apply_segment<T, Acc, kPerValue, kResidual>(xp + o, kResidual ? rp + o : nullptr, yp + o, len, scp + c, shp + c);
    });
  });
}

}  // namespace

// Evaluation mode: y = relu(batch_norm(x) (+ residual)) with the running statistics, one pass.
at::Tensor inference(const at::Tensor& x, const c10::optional<at::Tensor>& residual, const at::Tensor& weight,
                     const at::Tensor& bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                     double eps) {
  const Shape s = shape_of(x);
  if (residual.has_value()) check_like(*residual, x);
  for (const at::Tensor* t : {&weight, &bias, &running_mean, &running_var})
    TORCH_CHECK(t->numel() == s.c, "fused batch-norm: parameters and statistics need one value per channel of x");
  at::Tensor y = at::empty_like(x);
  const std::vector<double> w = to_doubles(weight), b = to_doubles(bias), rm = to_doubles(running_mean),
                            rv = to_doubles(running_var);
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "fused_bn_inference", [&] {
    using Acc = at::opmath_type<scalar_t>;
    std::vector<Acc> scale(s.c), shift(s.c);
    for (int64_t c = 0; c < s.c; ++c) {
      const double k = w[c] / std::sqrt(rv[c] + eps);
      scale[c] = k;
      shift[c] = b[c] - rm[c] * k;
    }
    apply_all(s, x.const_data_ptr<scalar_t>(), residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr,
              y.mutable_data_ptr<scalar_t>(), scale, shift);
  });
  return y;
}

// -> {y, mean, invstd} (mean and invstd in x's math type); running statistics updated in place.
std::vector<at::Tensor> forward(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                const at::Tensor& weight, const at::Tensor& bias, at::Tensor running_mean,
                                at::Tensor running_var, double momentum, double eps) {
  const Shape s = shape_of(x);
  const int64_t C = s.c, count = s.n * s.hw;
  TORCH_CHECK(count > 1, "fused batch-norm: needs more than one value per channel");
  if (residual.has_value()) check_like(*residual, x);
  at::Tensor y = at::empty_like(x);
  const std::vector<double> w = to_doubles(weight), b = to_doubles(bias);
  std::vector<double> mean(C), invstd(C), var(C);
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "fused_bn_forward", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    // Shifted sums: each channel's first value is within a few standard deviations of its mean,
    // so s2/n - (s1/n)^2 does not cancel however far the mean is from 0.
    std::vector<double> s1, s2, pivot(C);
    for (int64_t c = 0; c < C; ++c) pivot[c] = load(xp, s.channels_last ? c : c * s.hw);
    const std::vector<Acc> shift_by(pivot.begin(), pivot.end());
    with_flags(s.channels_last, false, [&](auto per_value, auto) {
      channel_sums<Acc>(s, shift_by, [xp](int64_t o, int64_t len, const Acc* p, Acc* a1, Acc* a2) {
        sums_segment<scalar_t, Acc, decltype(per_value)::value>(xp + o, len, p, a1, a2);
      }, s1, s2);
    });
    std::vector<Acc> scale(C), shift(C);
    for (int64_t c = 0; c < C; ++c) {
      const double offset = s1[c] / count;
      var[c] = std::max(0.0, s2[c] / count - offset * offset);
      mean[c] = offset + pivot[c];
      invstd[c] = 1.0 / std::sqrt(var[c] + eps);
      scale[c] = w[c] * invstd[c];
      shift[c] = b[c] - mean[c] * w[c] * invstd[c];
    }
    apply_all(s, xp, rp, yp, scale, shift);
  });
  // As nn.BatchNorm2d: running_var takes the unbiased variance.
  std::vector<double> unbiased(C);
  for (int64_t c = 0; c < C; ++c) unbiased[c] = var[c] * count / (count - 1);
  lerp_into(running_mean, mean, momentum);
  lerp_into(running_var, unbiased, momentum);
  return {y, per_channel(mean, math_type(x)), per_channel(invstd, math_type(x))};
}

// -> {dx, dweight, dbias, dresidual (undefined unless asked)}; g = dy where y > 0 (ReLU's backward).
std::vector<at::Tensor> backward(const at::Tensor& dy, const at::Tensor& y, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& invstd,
                                 bool residual) {
  const Shape s = shape_of(x);
  const int64_t C = s.c, count = s.n * s.hw;
  check_like(dy, x);
  check_like(y, x);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dres = residual ? at::empty_like(x) : at::Tensor();
  const std::vector<double> m = to_doubles(mean), is = to_doubles(invstd), w = to_doubles(weight);
  std::vector<double> sum_g, sum_gx;
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "fused_bn_backward", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    scalar_t* drp = residual ? dres.mutable_data_ptr<scalar_t>() : nullptr;
    const std::vector<Acc> centre(m.begin(), m.end());
    with_flags(s.channels_last, false, [&](auto per_value, auto) {
      channel_sums<Acc>(s, centre, [=](int64_t o, int64_t len, const Acc* p, Acc* a1, Acc* a2) {
        grad_sums_segment<scalar_t, Acc, decltype(per_value)::value>(dyp + o, yp + o, xp + o, len, p, a1, a2);
      }, sum_g, sum_gx);
    });
    // dx = w * invstd * (g - sum_g / n - (x - mean) * invstd^2 * sum_gx / n) = k1 * g + k2 * x + k3
    std::vector<Acc> k1(C), k2(C), k3(C);
    for (int64_t c = 0; c < C; ++c) {
      const double a = w[c] * is[c], b = -a * is[c] * is[c] * sum_gx[c] / count;
      k1[c] = a;
      k2[c] = b;
      k3[c] = -a * sum_g[c] / count - b * m[c];
    }
    with_flags(s.channels_last, residual, [&](auto per_value, auto with_residual) {
      constexpr bool kPerValue = decltype(per_value)::value, kResidual = decltype(with_residual)::value;
      const int64_t k = kPerValue ? rows_per_segment(s) : 1;
      const std::vector<Acc> w1 = wide(k1, k), w2 = wide(k2, k), w3 = wide(k3, k);
      const Acc* k1p = w1.data();
      const Acc* k2p = w2.data();
      const Acc* k3p = w3.data();
      channel_map(s, [=](int64_t o, int64_t len, int64_t c) {
        grad_input_segment<scalar_t, Acc, kPerValue, kResidual>(dyp + o, yp + o, xp + o, dxp + o,
                                                                kResidual ? drp + o : nullptr, len, k1p + c,
                                                                k2p + c, k3p + c);
      });
    });
  });
  std::vector<double> dweight(C);
  for (int64_t c = 0; c < C; ++c) dweight[c] = sum_gx[c] * is[c];
  return {dx, per_channel(dweight, weight.scalar_type()), per_channel(sum_g, weight.scalar_type()), dres};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "batch-norm (training) + ReLU (+ residual), forward");
  m.def("backward", &backward, "batch-norm (training) + ReLU (+ residual), backward");
  m.def("inference", &inference, "batch-norm (evaluation, running statistics) + ReLU (+ residual)");
}
