// Per-channel vectors of resnetlab's fused batch-norm kernels (fused_bn.cpp): conversions to and
// from tensors, the batch statistics and the running statistics of a batch-norm, and the
// coefficients of its backward.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <vector>

#include "fused_bn_passes.h"
#include "fused_bn_rows.h"

namespace resnetlab_bn {

// Per-channel vectors are read and written through their data, not with tensor ops: a layer's
// dozen of them would otherwise cost more than a small layer's passes over memory.
inline at::Tensor per_channel(const std::vector<double>& v, at::ScalarType dtype) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, dtype, "fused_bn_per_channel", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(v[i]);
  });
  return t;
}

// buffer = (1 - momentum) * buffer + momentum * v, in place (running statistics).
inline void lerp_into(at::Tensor& buffer, const std::vector<double>& v, double momentum) {
  TORCH_CHECK(buffer.is_contiguous() && buffer.numel() == static_cast<int64_t>(v.size()), "fused batch-norm: bad running statistics");
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, buffer.scalar_type(), "fused_bn_lerp", [&] {
    scalar_t* p = buffer.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i)
      p[i] = static_cast<scalar_t>(static_cast<double>(p[i]) + momentum * (v[i] - static_cast<double>(p[i])));
  });
}

// Every parameter and running statistic of a call holds one value per channel, checked before
// anything is written, so that a refused call leaves the module's buffers as they were.
inline void check_per_channel(std::initializer_list<const at::Tensor*> tensors, int64_t channels) {
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(t->numel() == channels, "fused batch-norm: parameters and statistics need one value per channel of x");
}

inline at::ScalarType math_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_like(const at::Tensor& t, const at::Tensor& x) {
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

inline std::vector<double> to_doubles(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<double> out(c.numel());
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, c.scalar_type(), "fused_bn_to_doubles", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
  });
  return out;
}

template <typename Acc>
std::vector<Acc> as(const std::vector<double>& v) { return std::vector<Acc>(v.begin(), v.end()); }

// One batch-norm's batch statistics and the per-channel scale and shift that apply them (held as
// doubles, exactly the math-type values the forward used).
struct Normalisation {
  std::vector<double> mean, var, invstd, scale, shift;
};

// The caller has checked weight and bias with check_per_channel.
template <typename T, typename Acc>
Normalisation normalisation(const Shape& s, const T* xp, const at::Tensor& weight, const at::Tensor& bias,
                            double eps) {
  const int64_t C = s.c, count = s.n * s.hw;
  TORCH_CHECK(count > 1, "fused batch-norm: needs more than one value per channel");
  const std::vector<double> w = to_doubles(weight), b = to_doubles(bias);
  // Shifted sums: each channel's first value is within a few standard deviations of its mean,
  // so s2/n - (s1/n)^2 does not cancel however far the mean is from 0.
  std::vector<double> pivot(C);
  for (int64_t c = 0; c < C; ++c) pivot[c] = load(xp, s.channels_last ? c : c * s.hw);
  std::array<std::vector<double>, 2> sums;
  if (!stats_in_registers<T, Acc>(s, xp, pivot, sums)) {
    const std::vector<Acc> wide_pivot = wide(as<Acc>(pivot), rows_per_segment(s));
    const Acc* pp = wide_pivot.data();
    with_flags(s.channels_last, false, [&](auto per_value, auto) {
      sums = channel_sums<2, Acc>(s, [xp, pp](int64_t o, int64_t len, int64_t c, std::array<Acc*, 2> a) {
        sums_segment<T, Acc, decltype(per_value)::value>(xp + o, len, pp + c, a[0], a[1]);
      });
    });
  }
  Normalisation n{std::vector<double>(C), std::vector<double>(C), std::vector<double>(C), std::vector<double>(C),
                  std::vector<double>(C)};
  for (int64_t c = 0; c < C; ++c) {
    const double offset = sums[0][c] / count;
    n.var[c] = std::max(0.0, sums[1][c] / count - offset * offset);
    n.mean[c] = offset + pivot[c];
    n.invstd[c] = 1.0 / std::sqrt(n.var[c] + eps);
    n.scale[c] = static_cast<Acc>(w[c] * n.invstd[c]);
    n.shift[c] = static_cast<Acc>(b[c] - n.mean[c] * w[c] * n.invstd[c]);
  }
  return n;
}

// As nn.BatchNorm2d: running_mean and running_var (the unbiased variance) move by momentum.
inline void update_running(at::Tensor& running_mean, at::Tensor& running_var, const Normalisation& n, int64_t count,
                    double momentum) {
  std::vector<double> unbiased(n.var.size());
  for (size_t c = 0; c < n.var.size(); ++c) unbiased[c] = n.var[c] * count / (count - 1);
  lerp_into(running_mean, n.mean, momentum);
  lerp_into(running_var, unbiased, momentum);
}

// The batch-norm backward collected per channel: dx = k1 * g + k2 * x + k3, from
// dx = w * invstd * (g - sum_g / n - (x - mean) * invstd^2 * sum_gx / n).
template <typename Acc>
std::array<std::vector<Acc>, 3> grad_coefficients(const std::vector<double>& w, const std::vector<double>& is,
                                                 const std::vector<double>& m, const std::vector<double>& sum_g,
                                                 const std::vector<double>& sum_gx, int64_t count, int64_t k) {
  const size_t C = w.size();
  std::vector<Acc> k1(C), k2(C), k3(C);
  for (size_t c = 0; c < C; ++c) {
    const double a = w[c] * is[c], b = -a * is[c] * is[c] * sum_gx[c] / count;
    k1[c] = a;
    k2[c] = b;
    k3[c] = -a * sum_g[c] / count - b * m[c];
  }
  return {wide(k1, k), wide(k2, k), wide(k3, k)};
}

// dweight = sum of g * (x - mean) * invstd, per channel.
inline std::vector<double> weight_grad(const std::vector<double>& sum_gx, const std::vector<double>& invstd) {
  std::vector<double> out(sum_gx.size());
  for (size_t c = 0; c < out.size(); ++c) out[c] = sum_gx[c] * invstd[c];
  return out;
}

}  // namespace resnetlab_bn
