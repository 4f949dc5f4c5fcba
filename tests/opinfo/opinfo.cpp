// Sample inputs, layouts and host references shared by the registry's entries.
#include "opinfo/opinfo.hpp"

#include <sstream>

namespace opinfo {

using kiln::numel_of;

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "contiguous";
    case Layout::Permuted: return "permuted";
    case Layout::Sliced: return "sliced";
    case Layout::Expanded: return "expanded";
  }
  return "?";
}

std::string describe(const Sample& s) {
  std::ostringstream o;
  for (std::size_t i = 0; i < s.args.size(); ++i)
    o << (i ? " with " : "") << layout_name(s.args[i].layout) << " " << kiln::shape_str(s.args[i].shape);
  if (!s.kw.dims.empty() || s.kw.keepdim) o << ", dims " << kiln::shape_str(s.kw.dims) << " keepdim " << s.kw.keepdim;
  return o.str();
}

namespace {

// The buffer a layout views, and the view of it.
Shape storage_shape(const Arg& a) {
  const Shape& s = a.shape;
  if (s.empty()) return s;
  Shape w = s;
  switch (a.layout) {
    case Layout::Contiguous: break;
    case Layout::Permuted: w.assign(s.rbegin(), s.rend()); break;
    case Layout::Sliced:
      for (std::size_t d = 0; d + 1 < w.size(); ++d) w[d] += 1;
      w.back() = 2 * s.back() + 1;
      break;
    case Layout::Expanded: w[0] = 1; break;
  }
  return w;
}

Tensor view_of(const Tensor& base, const Arg& a) {
  const Shape& s = a.shape;
  if (s.empty()) return base;
  switch (a.layout) {
    case Layout::Contiguous: return base;
    case Layout::Permuted: {
      Dims p(s.size());
      for (std::size_t i = 0; i < s.size(); ++i) p[i] = static_cast<std::int64_t>(s.size() - 1 - i);
      return base.permute(p);
    }
    case Layout::Sliced: {
      Tensor v = base.slice(-1, 1, 2 * s.back() + 1, 2);
      for (std::size_t d = 0; d + 1 < s.size(); ++d) v = v.narrow(static_cast<std::int64_t>(d), 1, s[d]);
      return v;
    }
    case Layout::Expanded: return base.expand(s);
  }
  return base;
}

Vec values_of(const Tensor& t) { return t.to(kiln::kFloat64).contiguous().to_vector<double>(); }

Tensor f64(const Vec& v, const Shape& shape) {
  return kiln::tensor(v, Shape{static_cast<std::int64_t>(v.size())}).reshape(shape).contiguous();
}

}  // namespace

Tensor make_input(const OpInfo& op, const Sample& s, std::size_t i, DType dt, const kiln::Device& device,
                  bool requires_grad) {
  const Arg& a = s.args[i];
  const Domain dom = i < op.domains.size() ? op.domains[i] : nullptr;
  const Shape bs = storage_shape(a);
  Vec v = ew::randvals(bs, 1000 + 17 * i + 7 * static_cast<std::uint64_t>(numel_of(a.shape)), dom);
  Tensor base = f64(v, bs).to(dt).to(device);
  if (requires_grad) base.requires_grad_();
  return view_of(base, a);
}

OpFn unary(std::function<Tensor(const Tensor&)> f) {
  return [f](const std::vector<Tensor>& in, const Kw&) { return f(in[0]); };
}

OpFn binary(std::function<Tensor(const Tensor&, const Tensor&)> f) {
  return [f](const std::vector<Tensor>& in, const Kw&) { return f(in[0], in[1]); };
}

OpFn ref_unary(std::function<double(double)> f) {
  return [f](const std::vector<Tensor>& in, const Kw&) { return f64(ew::map(values_of(in[0]), f), in[0].shape()); };
}

OpFn ref_binary(std::function<double(double, double)> f) {
  return [f](const std::vector<Tensor>& in, const Kw&) {
    const Shape &sa = in[0].shape(), &sb = in[1].shape();
    return f64(ew::host_binary(values_of(in[0]), sa, values_of(in[1]), sb, f), ew::bshape(sa, sb));
  };
}

OpFn ref_reduce(std::function<double(const Vec&)> r) {
  return [r](const std::vector<Tensor>& in, const Kw& kw) {
    const Shape& s = in[0].shape();
    Dims dims = kw.dims;
    if (s.empty()) dims.clear();  // a 0-D tensor reduces over "dim 0 / -1" as over nothing
    return f64(ew::host_reduce(values_of(in[0]), s, dims, r), ew::reduced_shape(s, dims, kw.keepdim));
  };
}

std::vector<Sample> unary_samples() {
  using L = Layout;
  return {
      // values only: enough elements for the vectorized path, its scalar tail, every layout
      {{{{5, 7}}}, {}, false},
      {{{{64}}}, {}, false},
      {{{{37}}}, {}, false},
      {{{{5, 7}, L::Sliced}}, {}, false},
      {{{{7, 5}, L::Permuted}}, {}, false},
      {{{{3, 4}, L::Expanded}}, {}, false},
      // values and gradients
      {{{{3, 4}}}},
      {{{{2, 3}, L::Sliced}}},
      {{{{3, 2}, L::Permuted}}},
      {{{{}}}},
      {{{{0, 3}}}},
  };
}

std::vector<Sample> binary_samples() {
  using L = Layout;
  std::vector<Sample> out;
  // values only: broadcasting, scalars and empty shapes
  for (auto [a, b] : std::vector<std::pair<Shape, Shape>>{
           {{2, 3}, {3}}, {{3, 1, 4}, {2, 4}}, {{2, 1}, {1, 3}}, {{}, {2, 3}}, {{0, 3}, {1, 3}}, {{4}, {4}}})
    out.push_back({{{a}, {b}}, {}, false});
  out.push_back({{{{2, 3}, L::Permuted}, {{2, 3}, L::Sliced}}, {}, false});
  out.push_back({{{{3, 4}, L::Expanded}, {{4}}}, {}, false});
  // values and gradients
  out.push_back({{{{3, 1, 4}}, {{2, 4}}}});
  out.push_back({{{{2, 3}, L::Sliced}, {{2, 3}, L::Sliced}}});
  out.push_back({{{{2, 3}, L::Sliced}, {{3}, L::Sliced}}});
  out.push_back({{{{3, 2}, L::Permuted}, {{2}}}});
  out.push_back({{{{}}, {{2, 3}}}});
  out.push_back({{{{2, 3}}, {{}}}});
  out.push_back({{{{}}, {{}}}});
  out.push_back({{{{0, 3}}, {{3}}}});
  return out;
}

std::vector<Sample> reduction_samples(bool empty_dims) {
  using L = Layout;
  std::vector<Sample> out;
  const std::vector<Dims> all_dims = {{},     {0},    {1},     {2},    {-1},      {-3},
                                      {0, 2}, {2, 0}, {-1, 0}, {1, 2}, {0, 1, 2}, {0, -2}};
  for (L l : {L::Contiguous, L::Permuted})
    for (const Dims& d : all_dims)
      for (bool keep : {false, true}) out.push_back({{{{2, 3, 4}, l}}, {d, keep}, false});
  for (L l : {L::Sliced, L::Expanded})
    for (const Dims& d : std::vector<Dims>{{}, {0}, {1}, {-1}, {0, 1}, {1, -1}})
      for (bool keep : {false, true}) out.push_back({{{{3, 4, 5}, l}}, {d, keep}, false});
  out.push_back({{{{300, 257}}}, {{0}}, false});  // vectorized across the kept dim, threaded
  out.push_back({{{{300, 257}}}, {{1}}, false});
  out.push_back({{{{257, 300}, L::Permuted}}, {{}}, false});
  for (const Dims& d : std::vector<Dims>{{}, {0}, {-1}}) out.push_back({{{{}}}, {d}, true});
  out.push_back({{{{0, 3}}}, {{1}}, true});  // an empty kept dim
  if (empty_dims)
    for (const Dims& d : std::vector<Dims>{{}, {0}, {0, 1}}) out.push_back({{{{0, 3}}}, {d}, true});
  for (const Dims& d : std::vector<Dims>{{}, {1}, {-1, 0}})
    for (bool keep : {false, true}) {
      out.push_back({{{{2, 3, 2}}}, {d, keep}});
      out.push_back({{{{2, 3, 2}, L::Sliced}}, {d, keep}});
    }
  out.push_back({{{{3, 4}, L::Permuted}}, {{0}}});
  return out;
}

const std::vector<OpInfo>& registry() {
  static const std::vector<OpInfo> all = [] {
    std::vector<OpInfo> v;
    for (auto part : {unary_ops, binary_ops, reduction_ops})
      for (auto& e : part()) v.push_back(std::move(e));
    return v;
  }();
  return all;
}

}  // namespace opinfo
