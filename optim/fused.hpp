#pragma once
/// The seam between an optimizer and the devices: its update rule, written once as a KILN_HD
/// functor, runs as one fused pass per parameter on every backend through core/foreach.hpp.
/// Nothing in core names an optimizer; a new optimizer brings its rule and its kernel table.
///
/// A step type S holds the per-step scalars, folded on the host (bias corrections, decayed
/// rates), and hands the rule its flags select to `run`:
///   struct SignStep {
///     double lr;
///     template <typename T, typename Run>
///     void with_rule(Run&& run) const { run(SignRule<T>{T(lr)}); }
///   };
///   template <typename T>
///   struct SignRule {  // called for every element i; the pointers are UpdateTensors' data
///     T lr;
///     KILN_HD void operator()(std::int64_t i, T* p, const T* g, T*, T*, T*) const {
///       p[i] -= lr * (g[i] > 0 ? T(1) : g[i] < 0 ? T(-1) : T(0));
///     }
///   };
///   const optim::UpdateKernels<SignStep> kernels{&optim::cpu_update<SignStep>, KILN_CUDA_UPDATE(SignStep)};
///   run_update(kernels, SignStep{lr}, {param, grad});   // inside an Optimizer (optimizer.hpp)
///
/// The CUDA kernel is `cuda_update<S>`, instantiated by nvcc in a .cu file that includes
/// optim/fused.cuh (see fused_kernels.cu); KILN_CUDA_UPDATE(S) names it in CUDA builds and is
/// null otherwise. Compile the .cpp that instantiates cpu_update with -fno-math-errno so the
/// loop vectorizes (optim/CMakeLists.txt).
#include <array>
#include <string>

#include "../core/error.hpp"
#include "../core/foreach.hpp"

namespace kiln::optim {

/// The tensors of one fused update: param, grad, then up to three state buffers (undefined =
/// unused, null in the rule). All contiguous, of the parameter's float dtype, element count
/// and device. A rule is called as rule(i, p, g, s0, s1, s2).
using UpdateTensors = std::array<Tensor, 5>;

/// The CPU kernel of step type S: the rule for the parameter's dtype over the thread pool.
template <typename S>
void cpu_update(const S& s, const UpdateTensors& t) {
  switch (t[0].dtype()) {
    case kFloat32: s.template with_rule<float>([&](const auto& rule) { foreach_cpu<float>(rule, t); }); break;
    case kFloat64: s.template with_rule<double>([&](const auto& rule) { foreach_cpu<double>(rule, t); }); break;
    default:
      throw_error("optim_update",
                  "parameters must be float32 or float64, got " + std::string(dtype_name(t[0].dtype())));
  }
}

/// The CUDA kernel of step type S (defined in optim/fused.cuh, instantiated in a .cu file).
template <typename S>
void cuda_update(const S& s, const UpdateTensors& t);

/// A step type's kernels by device (cuda null: no CUDA kernel, e.g. in a build without CUDA).
template <typename S>
struct UpdateKernels {
  void (*cpu)(const S&, const UpdateTensors&) = nullptr;
  void (*cuda)(const S&, const UpdateTensors&) = nullptr;
};

}  // namespace kiln::optim

#if defined(KILN_WITH_CUDA)
#define KILN_CUDA_UPDATE(S) (&::kiln::optim::cuda_update<S>)
#else
#define KILN_CUDA_UPDATE(S) nullptr
#endif
