#pragma once
/// nn::Linear — y = x W^T + b over the last dim, any leading dims (batch first).
///   nn::Linear fc(3, 4);                                     // weight (4, 3), bias (4,)
///   nn::Linear proj(nn::LinearOptions(512, 512).bias(false)
///                       .weight_init([](Tensor w, Generator* g) { nn::init::xavier_uniform_(w, 1.0, g); }));
///   Tensor y = fc(x);                                        // x (..., 3) -> y (..., 4)
/// Default init is PyTorch's: weight kaiming_uniform_(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)),
/// and bias U(-1/sqrt(in), 1/sqrt(in)).
#include <cstdint>

#include "init.hpp"
#include "module.hpp"

namespace kiln::nn {

struct LinearOptions {
  LinearOptions(std::int64_t in_features, std::int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  KILN_ARG(std::int64_t, in_features);
  KILN_ARG(std::int64_t, out_features);
  KILN_ARG(bool, bias) = true;
  /// Replace the default initializers (empty = default).
  KILN_ARG(InitFn, weight_init);
  KILN_ARG(InitFn, bias_init);
  /// Random numbers of the initializers, default or not (null = the default generator); it must
  /// outlive the layer.
  KILN_ARG(Generator*, generator) = nullptr;
};

class LinearImpl : public Module {
 public:
  LinearImpl(std::int64_t in_features, std::int64_t out_features)
      : LinearImpl(LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const LinearOptions& options);

  void reset() override;
  void reset_parameters() override;
  std::string extra_repr() const override;
  /// x (..., in_features) -> (..., out_features).
  Tensor forward(const Tensor& x);

  LinearOptions options;
  Tensor weight;  // (out_features, in_features)
  Tensor bias;    // (out_features,) or undefined
};
KILN_MODULE(Linear);

/// Returns its input (a placeholder in a Sequential or a FeedForward).
class IdentityImpl : public Module {
 public:
  IdentityImpl() : Module("Identity") {}
  Tensor forward(const Tensor& x) { return x; }
};
KILN_MODULE(Identity);

}  // namespace kiln::nn
