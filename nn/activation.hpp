#pragma once
/// Activation modules (no parameters), for Sequential and for printing:
///   nn::Sequential mlp(nn::Linear(8, 32), nn::GELU(nn::GELUOptions().approximate("tanh")), nn::Linear(32, 8));
///   nn::ReLU relu; Tensor y = relu(x);
/// GELU, SiLU, Tanh and Sigmoid take floating inputs (an integer one is an error, not a silent
/// promotion); ReLU also takes int64 and keeps it, as PyTorch's.
#include <string>

#include "module.hpp"

namespace kiln::nn {

class ReLUImpl : public Module {
 public:
  ReLUImpl() : Module("ReLU") {}
  Tensor forward(const Tensor& x) { return relu(x); }
};
KILN_MODULE(ReLU);

struct GELUOptions {
  GELUOptions() = default;
  /// "none" (exact, erf) or "tanh".
  KILN_ARG(std::string, approximate) = "none";
};

class GELUImpl : public Module {
 public:
  explicit GELUImpl(const GELUOptions& options = {});
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x);

  GELUOptions options;
};
KILN_MODULE(GELU);

/// x * sigmoid(x) (a.k.a. swish).
class SiLUImpl : public Module {
 public:
  SiLUImpl() : Module("SiLU") {}
  Tensor forward(const Tensor& x);
};
KILN_MODULE(SiLU);

class TanhImpl : public Module {
 public:
  TanhImpl() : Module("Tanh") {}
  Tensor forward(const Tensor& x);
};
KILN_MODULE(Tanh);

class SigmoidImpl : public Module {
 public:
  SigmoidImpl() : Module("Sigmoid") {}
  Tensor forward(const Tensor& x);
};
KILN_MODULE(Sigmoid);

}  // namespace kiln::nn
