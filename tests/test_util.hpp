#pragma once
// Shared helpers for kiln's doctest suites.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <kiln/kiln.hpp>
#include <string>
#include <vector>

namespace kt {

using kiln::Tensor;

/// Values of t (any dtype) equal `expect` within atol + rtol*|expect|, shape included.
inline void expect_values(const Tensor& t, const std::vector<double>& expect, double atol = 1e-6, double rtol = 1e-6) {
  auto v = t.to_vector<double>();
  REQUIRE(v.size() == expect.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    INFO("element " << i << ": got " << v[i] << ", expected " << expect[i]);
    if (std::isnan(expect[i])) CHECK(std::isnan(v[i]));
    else CHECK(std::abs(v[i] - expect[i]) <= atol + rtol * std::abs(expect[i]));
  }
}

inline void expect_shape(const Tensor& t, const kiln::Shape& s) {
  INFO("shape " << kiln::shape_str(t.shape()) << " vs expected " << kiln::shape_str(s));
  CHECK(t.shape() == s);
}

/// A float64 leaf with values from a fixed seed.
inline Tensor leaf(const kiln::Shape& s, std::uint64_t seed = 1, double scale = 1.0) {
  kiln::Generator g(seed);
  Tensor t = kiln::randn(s, kiln::kFloat64, &g);
  {
    kiln::NoGradGuard ng;
    t.mul_(scale);
  }
  return t.requires_grad_();
}

/// A non-contiguous float64 leaf (every other element of a wider buffer) holding `seed` values.
inline Tensor noncontig_leaf(const kiln::Shape& s, std::uint64_t seed = 1) {
  kiln::Shape wide = s;
  wide.push_back(2);
  Tensor buf = kiln::zeros(wide, kiln::kFloat64);
  Tensor view = buf.select(-1, 1);
  kiln::Generator g(seed);
  view.copy_(kiln::randn(s, kiln::kFloat64, &g));
  REQUIRE((view.numel() <= 1 || !view.is_contiguous()));
  return view.requires_grad_();
}

/// gradcheck that reports through doctest.
inline void grad_ok(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs,
                    double atol = 1e-5, double rtol = 1e-3) {
  kiln::autograd::GradcheckOptions o;
  o.atol(atol);
  o.rtol(rtol);
  try {
    CHECK(kiln::autograd::gradcheck(fn, inputs, o));
  } catch (const kiln::Error& e) {
    FAIL_CHECK(e.what());
  }
}

/// The message of the kiln::Error fn() throws, or "(no kiln::Error)" (for checks that compare
/// the whole message, or its parts, on every rank or case).
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "(no kiln::Error)";
}

/// One way to spoil a state dict (`edit`) and the text of the error loading it must give.
struct BadState {
  std::function<void(kiln::StateDict&)> edit;
  std::string error;
};
inline std::function<void(kiln::StateDict&)> set_scalar(std::string key, double v) {
  return [key, v](kiln::StateDict& s) { s.scalars[key] = v; };
}
inline std::function<void(kiln::StateDict&)> erase_scalar(std::string key) {
  return [key](kiln::StateDict& s) { s.scalars.erase(key); };
}
inline std::function<void(kiln::StateDict&)> set_tensor(std::string key, Tensor t) {
  return [key, t](kiln::StateDict& s) { s.insert(key, t); };
}

/// Each case's edit, applied alone to a copy of `good`, makes load(copy) throw a kiln::Error
/// whose message contains the case's text:
///   kt::check_bad_states(sd, [&](const kiln::StateDict& s) { opt.load_state_dict(s); },
///                        {{kt::erase_scalar("lr"), "missing scalar 'lr'"}});
template <typename Load>
void check_bad_states(const kiln::StateDict& good, Load&& load, const std::vector<BadState>& cases) {
  for (const BadState& c : cases) {
    kiln::StateDict bad = good;
    c.edit(bad);
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains(c.error.c_str()), kiln::Error);
  }
}

}  // namespace kt

/// CHECK that `expr` throws kiln::Error whose message contains `text`.
#define CHECK_KILN_ERROR(expr, text) CHECK_THROWS_WITH_AS(expr, doctest::Contains(text), kiln::Error)
