// PADRe mixer in plain ATen (one fused projection, one grouped convolution, the products in a loop over
// the degree), so it runs on any device; see padre_mixer.h for the definition. On CUDA, for float32 and
// bfloat16 up to kPadreMixMaxDim channels, everything between the two projections is one fused kernel
// (padre_mix_cuda.cu) whose test oracle is this composition.
#include "deltaserve/kernels/padre_mixer.h"

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "padre_mix_cuda.h"

namespace deltaserve::kernels {
namespace {

using internal::CheckDtype;
using internal::CheckSameDevice;
using internal::CheckSize;
using internal::CheckTensor;

absl::Status CheckWeights(const at::Tensor& x, const PadreMixerWeights& w, int64_t* degree, int64_t* kernel) {
  const int64_t dim = x.size(2);
  DS_RETURN_IF_ERROR(CheckTensor(w.proj_weight, "proj_weight", 2));
  DS_RETURN_IF_ERROR(CheckSize(w.proj_weight, "proj_weight", 1, dim, "model dim D"));
  if (w.proj_weight.size(0) % dim != 0) {
    return absl::InvalidArgumentError(absl::StrCat("proj_weight: dimension 0 must be a multiple of D = ", dim,
                                                   ", got ", w.proj_weight.size(0)));
  }
  const int64_t d = w.proj_weight.size(0) / dim;
  const int64_t dd = d * dim;
  DS_RETURN_IF_ERROR(CheckTensor(w.proj_bias, "proj_bias", 1));
  DS_RETURN_IF_ERROR(CheckSize(w.proj_bias, "proj_bias", 0, dd, "d*D"));
  DS_RETURN_IF_ERROR(CheckTensor(w.mix_weight, "mix_weight", 4));
  DS_RETURN_IF_ERROR(CheckSize(w.mix_weight, "mix_weight", 0, dd, "d*D"));
  DS_RETURN_IF_ERROR(CheckSize(w.mix_weight, "mix_weight", 1, 1, "depthwise"));
  const int64_t k = w.mix_weight.size(2);
  if (k % 2 == 0 || w.mix_weight.size(3) != k) {
    return absl::InvalidArgumentError(absl::StrCat("mix_weight: kernel must be square and odd, got ",
                                                   internal::ShapeString(w.mix_weight)));
  }
  DS_RETURN_IF_ERROR(CheckTensor(w.mix_global, "mix_global", 1));
  DS_RETURN_IF_ERROR(CheckSize(w.mix_global, "mix_global", 0, dd, "d*D"));
  DS_RETURN_IF_ERROR(CheckTensor(w.norm_weight, "norm_weight", 2));
  DS_RETURN_IF_ERROR(CheckSize(w.norm_weight, "norm_weight", 0, d, "degree d"));
  DS_RETURN_IF_ERROR(CheckSize(w.norm_weight, "norm_weight", 1, dim, "model dim D"));
  DS_RETURN_IF_ERROR(CheckTensor(w.out_weight, "out_weight", 2));
  DS_RETURN_IF_ERROR(CheckSize(w.out_weight, "out_weight", 0, dim, "model dim D"));
  DS_RETURN_IF_ERROR(CheckSize(w.out_weight, "out_weight", 1, dim, "model dim D"));
  DS_RETURN_IF_ERROR(CheckTensor(w.out_bias, "out_bias", 1));
  DS_RETURN_IF_ERROR(CheckSize(w.out_bias, "out_bias", 0, dim, "model dim D"));
  for (const auto& [t, name] : {std::pair{&w.proj_weight, "proj_weight"}, {&w.proj_bias, "proj_bias"},
                                {&w.mix_weight, "mix_weight"}, {&w.mix_global, "mix_global"},
                                {&w.norm_weight, "norm_weight"}, {&w.out_weight, "out_weight"},
                                {&w.out_bias, "out_bias"}}) {
    DS_RETURN_IF_ERROR(CheckDtype(*t, name, {x.scalar_type()}));
    DS_RETURN_IF_ERROR(CheckSameDevice(*t, name, x));
  }
  if (w.mix_weight_taps.defined()) {
    DS_RETURN_IF_ERROR(CheckTensor(w.mix_weight_taps, "mix_weight_taps", 2));
    DS_RETURN_IF_ERROR(CheckSize(w.mix_weight_taps, "mix_weight_taps", 0, k * k, "K*K taps"));
    DS_RETURN_IF_ERROR(CheckSize(w.mix_weight_taps, "mix_weight_taps", 1, dd, "d*D"));
    DS_RETURN_IF_ERROR(CheckDtype(w.mix_weight_taps, "mix_weight_taps", {x.scalar_type()}));
    DS_RETURN_IF_ERROR(CheckSameDevice(w.mix_weight_taps, "mix_weight_taps", x));
  }
  *degree = d;
  *kernel = k;
  return absl::OkStatus();
}

// [d*D, 1, K, K] -> [K*K, d*D]: the CUDA kernel's layout (PadreMixWeightTapMajor). Throws c10::Error.
at::Tensor TapMajor(const at::Tensor& mix_weight) {
  return mix_weight.reshape({mix_weight.size(0), -1}).t().contiguous();
}

}  // namespace

absl::StatusOr<at::Tensor> PadreMixWeightTapMajor(const at::Tensor& mix_weight) {
  DS_RETURN_IF_ERROR(CheckTensor(mix_weight, "mix_weight", 4, /*require_contiguous=*/false));
  DS_RETURN_IF_ERROR(CheckSize(mix_weight, "mix_weight", 1, 1, "depthwise"));
  DS_CATCH_ATEN({ return TapMajor(mix_weight); })
}

absl::StatusOr<at::Tensor> PadreMixer(const at::Tensor& x, int64_t grid_h, int64_t grid_w,
                                      const PadreMixerWeights& w, const PadreMixerOptions& options) {
  DS_RETURN_IF_ERROR(CheckTensor(x, "x", 3));
  DS_RETURN_IF_ERROR(CheckDtype(x, "x", {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}));
  if (grid_h < 1 || grid_w < 1 || grid_h * grid_w != x.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat("grid: ", grid_h, " x ", grid_w, " does not hold the ",
                                                   x.size(1), " tokens of x ", internal::ShapeString(x)));
  }
  int64_t d = 0, k = 0;
  DS_RETURN_IF_ERROR(CheckWeights(x, w, &d, &k));
  DS_CATCH_ATEN({
    const int64_t b = x.size(0), n = x.size(1), dim = x.size(2), dd = d * dim;
    const at::Tensor y = at::linear(x, w.proj_weight, w.proj_bias);  // [B, N, dD]
#ifdef DELTASERVE_WITH_CUDA
    if (options.fused_cuda && x.is_cuda() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
        dim <= internal::kPadreMixMaxDim) {
      // The weights are views of a checkpoint: usually contiguous already, then no copy. The mixing weights
      // are read tap-major ([K*K, dD], 56 KB for the shipped mixer), so that a warp's 32 channels of one tap
      // are one coalesced 128-byte read instead of 32 reads K*K elements apart: the loader's copy, or one
      // made here.
      const at::Tensor yc = y.contiguous(), global = w.mix_global.contiguous();
      const at::Tensor mix = w.mix_weight_taps.defined() ? w.mix_weight_taps.contiguous() : TapMajor(w.mix_weight);
      const at::Tensor norm = w.norm_weight.contiguous();
      const at::Tensor mean = at::mean(yc, {1}, /*keepdim=*/false, at::kFloat);  // [B, dD], float32 sums
      at::Tensor mixed = at::empty({b, n, dim}, x.options());
      internal::PadreMixArgs args{};
      args.y = yc.data_ptr();
      args.mean = mean.data_ptr<float>();
      args.mix_weight = mix.data_ptr();
      args.mix_global = global.data_ptr();
      args.norm_weight = norm.data_ptr();
      args.out = mixed.data_ptr();
      args.batch = b;
      args.grid_h = static_cast<int>(grid_h);
      args.grid_w = static_cast<int>(grid_w);
      args.dim = static_cast<int>(dim);
      args.degree = static_cast<int>(d);
      args.kernel = static_cast<int>(k);
      args.eps = static_cast<float>(w.eps);
      args.bf16 = x.scalar_type() == at::kBFloat16;
      args.device = x.get_device();
      internal::PadreMixCuda(args);
      return at::linear(mixed, w.out_weight, w.out_bias);
    }
#endif
    const at::Tensor grid = y.transpose(1, 2).reshape({b, dd, grid_h, grid_w});
    const at::Tensor local = at::conv2d(grid, w.mix_weight, {}, 1, k / 2, 1, dd);  // depthwise
    const at::Tensor z = local.reshape({b, dd, n}).transpose(1, 2) + w.mix_global * y.mean(1, true);
    const std::vector<at::Tensor> terms = z.split(dim, -1);
    at::Tensor h = terms[0];
    auto normed = [&](const at::Tensor& t, int64_t i) {
      return t * at::rsqrt(t.square().mean(-1, true) + w.eps) * w.norm_weight[i];
    };
    at::Tensor acc = normed(h, 0);
    for (int64_t i = 1; i < d; ++i) {
      h = h * terms[static_cast<size_t>(i)];
      acc = acc + normed(h, i);
    }
    return at::linear(acc, w.out_weight, w.out_bias);
  });
}

int64_t PadreMixerMacs(int64_t batch, int64_t tokens, int64_t dim, int64_t degree, int64_t kernel) {
  const int64_t per_token = degree * dim * dim        // projections
                            + degree * dim * kernel * kernel  // depthwise convolution
                            + degree * dim * 4               // mean, products, norms
                            + dim * dim;                     // output projection
  return batch * tokens * per_token;
}

int64_t SoftmaxAttentionMacs(int64_t batch, int64_t tokens, int64_t dim) {
  // qkv and output projections, then q k^T and the weighted sum of v: 2 N^2 D.
  return batch * (tokens * 4 * dim * dim + 2 * tokens * tokens * dim);
}

}  // namespace deltaserve::kernels
