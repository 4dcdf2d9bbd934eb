// Batch-norm (training) + ReLU (+ residual addition), forward and backward, in two passes over
// memory each way, and batch-norm (evaluation) + ReLU (+ residual) in one; the pair kernels do the
// same for relu(bn(a) + bn_shortcut(b)), a block with a projection shortcut. Built on first use by
// resnetlab/models/fused_bn.py (torch.utils.cpp_extension); the passes are in fused_bn_passes.h and
// fused_bn_pair.h.
#include <torch/extension.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fused_bn_channels.h"
#include "fused_bn_pair.h"
#include "fused_bn_passes.h"
#include "fused_bn_rows.h"

namespace {

using namespace resnetlab_bn;

// y = relu(x * scale + shift (+ r)) over the whole tensor, scale and shift per channel.
template <typename T, typename Acc>
void apply_all(const Shape& s, const T* xp, const T* rp, T* yp, const std::vector<Acc>& scale,
               const std::vector<Acc>& shift) {
  with_flags(s.channels_last, rp != nullptr, [&](auto per_value, auto with_residual) {
    constexpr bool kPerValue = decltype(per_value)::value, kResidual = decltype(with_residual)::value;
    if (apply_in_registers<T, Acc, kResidual>(s, xp, rp, yp, scale.data(), shift.data())) return;
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
  check_per_channel({&weight, &bias, &running_mean, &running_var}, s.c);
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

// -> {y, mean, invstd, scale, shift} (per channel, in x's math type; scale and shift are the very
// values y was computed with, so that backward can find ReLU's mask in x); running statistics
// updated in place.
std::vector<at::Tensor> forward(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                const at::Tensor& weight, const at::Tensor& bias, at::Tensor running_mean,
                                at::Tensor running_var, double momentum, double eps) {
  const Shape s = shape_of(x);
  if (residual.has_value()) check_like(*residual, x);
  check_per_channel({&weight, &bias, &running_mean, &running_var}, s.c);
  at::Tensor y = at::empty_like(x);
  Normalisation n;
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "fused_bn_forward", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    n = normalisation<scalar_t, Acc>(s, xp, weight, bias, eps);
    apply_all(s, xp, residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr,
              y.mutable_data_ptr<scalar_t>(), as<Acc>(n.scale), as<Acc>(n.shift));
  });
  update_running(running_mean, running_var, n, s.n * s.hw, momentum);
  const at::ScalarType mt = math_type(x);
  return {y, per_channel(n.mean, mt), per_channel(n.invstd, mt), per_channel(n.scale, mt), per_channel(n.shift, mt)};
}

// The forward's batch statistics alone, for a convolution that applies them as it reads x
// (models/bn_relu_conv.py): -> {mean, invstd, scale, shift}, the very values `forward` returns for
// the same x; running statistics updated in place. One pass over x, nothing written.
std::vector<at::Tensor> statistics(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   at::Tensor running_mean, at::Tensor running_var, double momentum, double eps) {
  const Shape s = shape_of(x);
  check_per_channel({&weight, &bias, &running_mean, &running_var}, s.c);
  Normalisation n;
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "fused_bn_statistics", [&] {
    n = normalisation<scalar_t, at::opmath_type<scalar_t>>(s, x.const_data_ptr<scalar_t>(), weight, bias, eps);
  });
  update_running(running_mean, running_var, n, s.n * s.hw, momentum);
  const at::ScalarType mt = math_type(x);
  return {per_channel(n.mean, mt), per_channel(n.invstd, mt), per_channel(n.scale, mt), per_channel(n.shift, mt)};
}

// -> {dx, dweight, dbias, dresidual (undefined unless asked)}; g = dy where ReLU let the value
// through: where y > 0, or, when y is not given (no residual), where x * scale + shift > 0 with the
// forward's scale and shift.
std::vector<at::Tensor> backward(const at::Tensor& dy, const c10::optional<at::Tensor>& y, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& invstd,
                                 const at::Tensor& scale, const at::Tensor& shift, bool residual) {
  const Shape s = shape_of(x);
  const int64_t count = s.n * s.hw, k = rows_per_segment(s);
  const bool mask_from_x = !y.has_value();
  TORCH_CHECK(!(mask_from_x && residual), "fused batch-norm: with a residual, backward needs the output y");
  check_like(dy, x);
  if (y.has_value()) check_like(*y, x);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dres = residual ? at::empty_like(x) : at::Tensor();
  const std::vector<double> m = to_doubles(mean), is = to_doubles(invstd), w = to_doubles(weight);
  std::array<std::vector<double>, 2> sums;  // of g and of g * (x - mean)
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, x.scalar_type(), "fused_bn_backward", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = mask_from_x ? nullptr : y->const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    scalar_t* drp = residual ? dres.mutable_data_ptr<scalar_t>() : nullptr;
    const std::vector<Acc> wmean = wide(as<Acc>(m), k), wscale = wide(as<Acc>(to_doubles(scale)), k),
                           wshift = wide(as<Acc>(to_doubles(shift)), k);
    const Acc* mp = wmean.data();
    const Acc* scp = wscale.data();
    const Acc* shp = wshift.data();
    with_flags(s.channels_last, mask_from_x, [&](auto per_value, auto from_x) {
      constexpr bool kPerValue = decltype(per_value)::value;
      constexpr Mask kMask = decltype(from_x)::value ? Mask::kFromX : Mask::kFromY;
      auto run = [&](auto store_g) {  // with a residual, g is stored here as its gradient
        constexpr bool kStoreG = decltype(store_g)::value;
        if (grad_sums_in_registers<scalar_t, Acc, kMask, kStoreG>(s, dyp, yp, xp, drp, mp, scp, shp, sums)) return;
        sums = channel_sums<2, Acc>(s, [=](int64_t o, int64_t len, int64_t c, std::array<Acc*, 2> a) {
          grad_sums_segment<scalar_t, Acc, kPerValue, kMask, kStoreG>(
              dyp + o, kMask == Mask::kFromY ? yp + o : nullptr, xp + o, len, mp + c, scp + c, shp + c, a[0], a[1],
              kStoreG ? drp + o : nullptr);
        });
      };
      if (residual) run(std::true_type{});
      else run(std::false_type{});
    });
    const auto ks = grad_coefficients<Acc>(w, is, m, sums[0], sums[1], count, k);
    const Acc* k1p = ks[0].data();
    const Acc* k2p = ks[1].data();
    const Acc* k3p = ks[2].data();
    with_flags(s.channels_last, residual, [&](auto per_value, auto with_residual) {
      constexpr bool kPerValue = decltype(per_value)::value, kResidual = decltype(with_residual)::value;
      auto run = [&](auto mask) {
        constexpr Mask kMask = decltype(mask)::value;
        if (grad_input_in_registers<scalar_t, Acc, kResidual, kMask>(s, dyp, yp, xp, dxp, drp, k1p, k2p, k3p, scp, shp))
          return;
        channel_map(s, [=](int64_t o, int64_t len, int64_t c) {
          grad_input_segment<scalar_t, Acc, kPerValue, kResidual, kMask>(
              dyp + o, kMask == Mask::kFromY ? yp + o : nullptr, xp + o, dxp + o, kResidual ? drp + o : nullptr, len,
              k1p + c, k2p + c, k3p + c, scp + c, shp + c);
        });
      };
      if (mask_from_x) run(std::integral_constant<Mask, Mask::kFromX>{});
      else run(std::integral_constant<Mask, Mask::kFromY>{});
    });
  });
  return {dx, per_channel(weight_grad(sums[1], is), weight.scalar_type()), per_channel(sums[0], weight.scalar_type()),
          dres};
}

// relu(bn_a(a) + bn_b(b)), training: -> {y, mean_a, invstd_a, mean_b, invstd_b}; both batch-norms'
// running statistics updated in place.
std::vector<at::Tensor> forward_pair(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight_a,
                                     const at::Tensor& bias_a, at::Tensor running_mean_a, at::Tensor running_var_a,
                                     double momentum_a, double eps_a, const at::Tensor& weight_b,
                                     const at::Tensor& bias_b, at::Tensor running_mean_b, at::Tensor running_var_b,
                                     double momentum_b, double eps_b) {
  const Shape s = shape_of(a);
  check_like(b, a);
  check_per_channel({&weight_a, &bias_a, &running_mean_a, &running_var_a, &weight_b, &bias_b, &running_mean_b,
                     &running_var_b}, s.c);
  at::Tensor y = at::empty_like(a);
  Normalisation na, nb;
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, a.scalar_type(), "fused_bn_forward_pair", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    na = normalisation<scalar_t, Acc>(s, ap, weight_a, bias_a, eps_a);
    nb = normalisation<scalar_t, Acc>(s, bp, weight_b, bias_b, eps_b);
    const int64_t k = rows_per_segment(s);
    const std::vector<Acc> sa = wide(as<Acc>(na.scale), k), ha = wide(as<Acc>(na.shift), k),
                           sb = wide(as<Acc>(nb.scale), k), hb = wide(as<Acc>(nb.shift), k);
    const Acc *sap = sa.data(), *hap = ha.data(), *sbp = sb.data(), *hbp = hb.data();
    with_flags(s.channels_last, false, [&](auto per_value, auto) {
      channel_map(s, [=](int64_t o, int64_t len, int64_t c) {
        apply_pair_segment<scalar_t, Acc, decltype(per_value)::value>(ap + o, bp + o, yp + o, len, sap + c, hap + c,
                                                                      sbp + c, hbp + c);
      });
    });
  });
  const int64_t count = s.n * s.hw;
  update_running(running_mean_a, running_var_a, na, count, momentum_a);
  update_running(running_mean_b, running_var_b, nb, count, momentum_b);
  const at::ScalarType mt = math_type(a);
  return {y, per_channel(na.mean, mt), per_channel(na.invstd, mt), per_channel(nb.mean, mt), per_channel(nb.invstd, mt)};
}

// -> {da, dweight_a, dbias_a, db, dweight_b, dbias_b}; g = dy where y > 0.
std::vector<at::Tensor> backward_pair(const at::Tensor& dy, const at::Tensor& y, const at::Tensor& a,
                                      const at::Tensor& b, const at::Tensor& weight_a, const at::Tensor& mean_a,
                                      const at::Tensor& invstd_a, const at::Tensor& weight_b,
                                      const at::Tensor& mean_b, const at::Tensor& invstd_b) {
  const Shape s = shape_of(a);
  const int64_t count = s.n * s.hw, k = rows_per_segment(s);
  for (const at::Tensor* t : {&dy, &y, &b}) check_like(*t, a);
  at::Tensor da = at::empty_like(a), db = at::empty_like(a);
  const std::vector<double> ma = to_doubles(mean_a), isa = to_doubles(invstd_a), wa = to_doubles(weight_a),
                            mb = to_doubles(mean_b), isb = to_doubles(invstd_b), wb = to_doubles(weight_b);
  std::array<std::vector<double>, 3> sums;  // of g, g * (a - mean_a) and g * (b - mean_b)
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, a.scalar_type(), "fused_bn_backward_pair", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t *dyp = dy.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>(),
                   *ap = a.const_data_ptr<scalar_t>(), *bp = b.const_data_ptr<scalar_t>();
    scalar_t *dap = da.mutable_data_ptr<scalar_t>(), *dbp = db.mutable_data_ptr<scalar_t>();
    const std::vector<Acc> wma = wide(as<Acc>(ma), k), wmb = wide(as<Acc>(mb), k);
    const Acc *map = wma.data(), *mbp = wmb.data();
    with_flags(s.channels_last, false, [&](auto per_value, auto) {
      sums = channel_sums<3, Acc>(s, [=](int64_t o, int64_t len, int64_t c, std::array<Acc*, 3> t) {
        grad_sums_pair_segment<scalar_t, Acc, decltype(per_value)::value>(dyp + o, yp + o, ap + o, bp + o, len,
                                                                          map + c, mbp + c, t[0], t[1], t[2]);
      });
    });
    const auto ka = grad_coefficients<Acc>(wa, isa, ma, sums[0], sums[1], count, k);
    const auto kb = grad_coefficients<Acc>(wb, isb, mb, sums[0], sums[2], count, k);
    const Acc *ka1 = ka[0].data(), *ka2 = ka[1].data(), *ka3 = ka[2].data();
    const Acc *kb1 = kb[0].data(), *kb2 = kb[1].data(), *kb3 = kb[2].data();
    with_flags(s.channels_last, false, [&](auto per_value, auto) {
      channel_map(s, [=](int64_t o, int64_t len, int64_t c) {
        grad_input_pair_segment<scalar_t, Acc, decltype(per_value)::value>(
            dyp + o, yp + o, ap + o, bp + o, dap + o, dbp + o, len, ka1 + c, ka2 + c, ka3 + c, kb1 + c, kb2 + c, kb3 + c);
      });
    });
  });
  const at::ScalarType ta = weight_a.scalar_type(), tb = weight_b.scalar_type();
  return {da, per_channel(weight_grad(sums[1], isa), ta), per_channel(sums[0], ta),
          db, per_channel(weight_grad(sums[2], isb), tb), per_channel(sums[0], tb)};
}

// dx[n, :C, 2i, 2j] += g[n, :C, i, j] in place, dx (N, C, H, W) and g (N, K >= C, ceil(H/2), ceil(W/2))
// channels_last of one dtype: option A's shortcut gradient added into a stage entry's input
// gradient (models/shortcuts.py). PyTorch's own strided addition walks runs of C values, and for
// bf16 runs shorter than its vectors (16 channels) it ran scalar: 0.65 ms at ResNet-20's first
// stage entry, 13x its addition of 32 channels per pixel. The sum is rounded as PyTorch rounds it.
at::Tensor add_at_even_pixels(at::Tensor dx, const at::Tensor& g) {
  // is_contiguous(ChannelsLast), not shape_of: a g of 1 x 1 pixels is both layouts, the same memory
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(dx.dim() == 4 && g.dim() == 4 && dx.is_contiguous(cl) && g.is_contiguous(cl) &&
                  dx.scalar_type() == g.scalar_type() && g.size(0) == dx.size(0) && g.size(1) >= dx.size(1) &&
                  g.size(2) == (dx.size(2) + 1) / 2 && g.size(3) == (dx.size(3) + 1) / 2,
              "add_at_even_pixels: expected channels_last dx (N, C, H, W) and g (N, K >= C, ceil(H/2), ceil(W/2))");
  const int64_t N = dx.size(0), C = dx.size(1), K = g.size(1), H = dx.size(2), W = dx.size(3), h2 = g.size(2),
                w2 = g.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, dx.scalar_type(), "add_at_even_pixels", [&] {
    using Acc = at::opmath_type<scalar_t>;
    scalar_t* d = dx.mutable_data_ptr<scalar_t>();
    const scalar_t* q = g.const_data_ptr<scalar_t>();
    at::parallel_for(0, N * h2 * w2, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r: (n, i, j) of g
        const int64_t n = r / (h2 * w2), i = r / w2 % h2, j = r % w2;
        scalar_t* __restrict out = d + ((n * H + 2 * i) * W + 2 * j) * C;
        const scalar_t* __restrict in = q + r * K;
        for (int64_t c = 0; c < C; ++c) store(out, c, Acc(load(out, c)) + Acc(load(in, c)));
      }
    });
  });
  return dx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "batch-norm (training) + ReLU (+ residual), forward");
  m.def("statistics", &statistics, "batch-norm (training): the forward's statistics alone, x not written");
  m.def("backward", &backward, "batch-norm (training) + ReLU (+ residual), backward");
  m.def("forward_pair", &forward_pair, "relu(batch_norm(a) + batch_norm(b)) (training), forward");
  m.def("backward_pair", &backward_pair, "relu(batch_norm(a) + batch_norm(b)) (training), backward");
  m.def("add_at_even_pixels", &add_at_even_pixels, "dx[:, :C, ::2, ::2] += g[:, :C] in place (channels_last)");
  m.def("inference", &inference, "batch-norm (evaluation, running statistics) + ReLU (+ residual)");
  m.def("use_row_passes", [](bool on) { row_passes_on() = on; },
        "the passes of fused_bn_rows.h where they apply (true, the default) or fused_bn_passes.h's");
  m.attr("row_passes_built") = bool(RESNETLAB_BN_ROWS);
}
