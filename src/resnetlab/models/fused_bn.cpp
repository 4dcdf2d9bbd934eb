// Batch-norm (training) + ReLU (+ residual addition), forward and backward, in two passes over
// memory each way, and batch-norm (evaluation) + ReLU (+ residual) in one. Built on first use by
// resnetlab/models/fused_bn.py (torch.utils.cpp_extension); the passes are in fused_bn_passes.h.
#include <torch/extension.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fused_bn_passes.h"

namespace {

using namespace resnetlab_bn;

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
