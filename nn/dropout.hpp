#pragma once
/// nn::Dropout — inverted dropout in training mode, identity after eval().
///   nn::Dropout drop(0.1);
///   kiln::Generator g(7);
///   nn::Dropout seeded(nn::DropoutOptions(0.1).generator(&g));   // g must outlive the module
///   Tensor y = drop(x);
#include "../core/generator.hpp"
#include "module.hpp"

namespace kiln::nn {

struct DropoutOptions {
  DropoutOptions(double p = 0.5) : p_(p) {}
  KILN_ARG(double, p);
  /// Where the masks come from; null = the default generator.
  KILN_ARG(Generator*, generator) = nullptr;
};

class DropoutImpl : public Module {
 public:
  explicit DropoutImpl(const DropoutOptions& options = {});
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x);

  DropoutOptions options;
};
KILN_MODULE(Dropout);

}  // namespace kiln::nn
