#include "module.hpp"

#include <cxxabi.h>

#include "../autograd/node.hpp"

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

namespace kiln::nn {

namespace {

enum Kind { kParameter = 0, kBuffer = 1, kModule = 2 };
const char* kind_name(int k) { return k == kParameter ? "parameter" : k == kBuffer ? "buffer" : "submodule"; }

// "kiln::nn::LinearImpl" -> "Linear"; namespaces inside template arguments are kept.
std::string pretty_type_name(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  std::string n = (status == 0 && d) ? d.get() : mangled;
  std::size_t start = 0;
  int depth = 0;
  for (std::size_t i = 0; i + 1 < n.size(); ++i) {
    if (n[i] == '<') ++depth;
    else if (n[i] == '>') --depth;
    else if (depth == 0 && n[i] == ':' && n[i + 1] == ':') start = i + 2;
  }
  n = n.substr(start);
  if (n.size() > 4 && n.ends_with("Impl")) n.resize(n.size() - 4);
  return n;
}

// kiln has no Tensor::set_data: the move re-points the parameter's own TensorImpl at the
// converted data, so every handle to it (the layer's member, an optimizer's list) follows.
void set_data(const Tensor& dst, const Tensor& src) {
  TensorImpl* d = dst.impl_ptr();
  std::uint64_t version = d->storage->version;
  d->storage = src.storage();
  d->shape = src.shape();
  d->strides = src.strides();
  d->offset = src.offset();
  d->dtype = src.dtype();
  d->storage->version = version + 1;  // a graph recorded before the move refuses to run backward
  if (d->autograd) d->autograd->grad_accumulator.reset();
}

Tensor converted(const Tensor& t, Device device, DType dtype) {
  NoGradGuard ng;
  Tensor c = t.detach();
  if (c.device() != device) c = c.to(device);
  if (c.dtype() != dtype) c = c.to(dtype);
  return c;
}

void move_tensor(const Tensor& t, std::optional<Device> device, std::optional<DType> dtype) {
  if (!t.defined()) return;
  DType dt = (dtype && t.is_floating_point()) ? *dtype : t.dtype();
  Device dev = device ? *device : t.device();
  if (dt == t.dtype() && dev == t.device()) return;
  Tensor grad = t.grad();
  set_data(t, converted(t, dev, dt));
  if (grad.defined()) t.set_grad(converted(grad, dev, dt));
}

std::string group_digits(std::int64_t n) {
  std::string s = std::to_string(n), out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string count_str(std::int64_t n) { return group_digits(n) + (n == 1 ? " parameter" : " parameters"); }

std::string join_quoted(const std::vector<std::string>& keys) {
  std::string s;
  for (std::size_t i = 0; i < keys.size(); ++i) s += (i ? ", '" : "'") + keys[i] + "'";
  return s;
}

}  // namespace

void check_floating_input(const char* layer, const Tensor& x, const char* what) {
  KILN_CHECK(x.defined(), layer, "{} tensor is undefined", what);
  KILN_CHECK(x.is_floating_point(), layer,
             "{} dtype {} is not supported: expected a floating dtype (float32, float64, bfloat16, float16)", what,
             dtype_name(x.dtype()));
}

Module::Module(std::string name) : name_(std::move(name)) {}

const std::string& Module::name() const {
  if (name_.empty()) name_ = pretty_type_name(typeid(*this).name());
  return name_;
}

// ---- registration ----

void Module::check_new_name(const std::string& name, const char* op, int kind) const {
  KILN_CHECK(!name.empty(), op, "{} name must not be empty (in {})", kind_name(kind), this->name());
  KILN_CHECK(name.find('.') == std::string::npos, op, "{} name '{}' must not contain '.' (in {})", kind_name(kind),
             name, this->name());
  int existing = parameters_.contains(name) ? kParameter
                 : buffers_.contains(name)  ? kBuffer
                 : children_.contains(name) ? kModule
                                            : -1;
  KILN_CHECK(existing < 0 || existing == kind, op, "'{}' is already a {} of {}; cannot register it as a {}", name,
             kind_name(existing), this->name(), kind_name(kind));
}

Tensor Module::register_parameter(std::string name, Tensor tensor, bool requires_grad) {
  check_new_name(name, "register_parameter", kParameter);
  if (tensor.defined()) {
    KILN_CHECK(tensor.is_leaf(), "register_parameter",
               "parameter '{}' of {} must be a leaf tensor, but it was produced by '{}'; detach() it first", name,
               this->name(), tensor.grad_fn()->name());
    KILN_CHECK(!requires_grad || tensor.is_floating_point(), "register_parameter",
               "parameter '{}' of {} must be floating point to require grad, got {}", name, this->name(),
               dtype_name(tensor.dtype()));
    tensor.requires_grad_(requires_grad);
  }
  parameters_.insert(std::move(name), tensor);
  return tensor;
}

Tensor Module::register_buffer(std::string name, Tensor tensor, bool persistent) {
  check_new_name(name, "register_buffer", kBuffer);
  std::erase(non_persistent_, name);
  if (!persistent) non_persistent_.push_back(name);
  buffers_.insert(std::move(name), tensor);
  return tensor;
}

void Module::add_child(std::string name, std::shared_ptr<Module> module) {
  check_new_name(name, "register_module", kModule);
  KILN_CHECK(module != nullptr, "register_module", "submodule '{}' of {} is null (an empty holder?)", name,
             this->name());
  KILN_CHECK(module.get() != this, "register_module", "{} cannot register itself as its submodule '{}'", this->name(),
             name);
  children_.insert(std::move(name), std::move(module));
}

void Module::replace_child(const std::string& name, std::shared_ptr<Module> module) {
  KILN_CHECK(children_.contains(name), "replace_module", "{} has no submodule '{}'", this->name(), name);
  add_child(name, std::move(module));
}

// ---- traversal ----

OrderedDict<Tensor> Module::named_parameters(bool recurse) const {
  OrderedDict<Tensor> out;
  std::unordered_set<const TensorImpl*> seen;
  std::function<void(const Module&, const std::string&)> walk = [&](const Module& m, const std::string& prefix) {
    for (const auto& [k, p] : m.parameters_)
      if (p.defined() && seen.insert(p.impl_ptr()).second) out.insert(prefix + k, p);
    if (recurse)
      for (const auto& [k, c] : m.children_) walk(*c, prefix + k + ".");
  };
  walk(*this, "");
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const { return named_parameters(recurse).values(); }

OrderedDict<Tensor> Module::named_buffers(bool recurse) const {
  OrderedDict<Tensor> out;
  std::unordered_set<const TensorImpl*> seen;
  std::function<void(const Module&, const std::string&)> walk = [&](const Module& m, const std::string& prefix) {
    for (const auto& [k, b] : m.buffers_)
      if (b.defined() && seen.insert(b.impl_ptr()).second) out.insert(prefix + k, b);
    if (recurse)
      for (const auto& [k, c] : m.children_) walk(*c, prefix + k + ".");
  };
  walk(*this, "");
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const { return named_buffers(recurse).values(); }

OrderedDict<std::shared_ptr<Module>> Module::named_children() const { return children_; }

std::vector<std::shared_ptr<Module>> Module::children() const { return children_.values(); }

OrderedDict<std::shared_ptr<Module>> Module::named_modules(const std::string& prefix, bool include_self) {
  OrderedDict<std::shared_ptr<Module>> out;
  std::unordered_set<const Module*> seen{this};
  std::function<void(const Module&, const std::string&)> walk = [&](const Module& m, const std::string& pre) {
    for (const auto& [k, c] : m.children_) {
      if (!seen.insert(c.get()).second) continue;
      std::string name = pre.empty() ? k : pre + "." + k;
      out.insert(name, c);
      walk(*c, name);
    }
  };
  if (include_self) {
    std::shared_ptr<Module> self = weak_from_this().lock();
    if (!self) self = std::shared_ptr<Module>(std::shared_ptr<Module>(), this);  // non-owning alias
    out.insert(prefix, self);
  }
  walk(*this, prefix);
  return out;
}

std::vector<std::shared_ptr<Module>> Module::modules(bool include_self) {
  return named_modules("", include_self).values();
}

void Module::apply(const std::function<void(Module&)>& fn) {
  for (auto& m : modules(true)) fn(*m);
}

void Module::apply(const std::function<void(const std::string&, Module&)>& fn, const std::string& prefix) {
  for (auto& [k, m] : named_modules(prefix, true)) fn(k, *m);
}

// ---- modes, devices, dtypes ----

void Module::train(bool on) {
  training_ = on;
  for (auto& [k, c] : children_) c->train(on);
}

void Module::to(Device device) {
  for (auto& t : parameters()) move_tensor(t, device, std::nullopt);
  for (auto& t : buffers()) move_tensor(t, device, std::nullopt);
}

void Module::to(DType dtype) {
  KILN_CHECK(is_floating(dtype), "Module::to", "{}.to() accepts floating point dtypes only, got {}", name(),
             dtype_name(dtype));
  for (auto& t : parameters()) move_tensor(t, std::nullopt, dtype);
  for (auto& t : buffers()) move_tensor(t, std::nullopt, dtype);
}

void Module::to(Device device, DType dtype) {
  KILN_CHECK(is_floating(dtype), "Module::to", "{}.to() accepts floating point dtypes only, got {}", name(),
             dtype_name(dtype));
  for (auto& t : parameters()) move_tensor(t, device, dtype);
  for (auto& t : buffers()) move_tensor(t, device, dtype);
}

// ---- gradients ----

void Module::zero_grad(bool set_to_none) {
  NoGradGuard ng;
  for (auto& p : parameters()) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (set_to_none) {
      p.set_grad(Tensor());
    } else {
      if (g.requires_grad()) {  // a create_graph gradient: drop its history, keep the memory
        g = g.detach();
        p.set_grad(g);
      }
      g.zero_();
    }
  }
}

std::int64_t Module::num_parameters(bool trainable_only) const {
  std::int64_t n = 0;
  for (const auto& p : parameters())
    if (!trainable_only || p.requires_grad()) n += p.numel();
  return n;
}

void Module::reset_parameters() {
  for (auto& [k, c] : children_) c->reset_parameters();
}

// ---- checkpoints ----

void Module::collect_state(const std::string& prefix, OrderedDict<Tensor>& out) const {
  for (const auto& [k, p] : parameters_)
    if (p.defined()) out.insert(prefix + k, p.detach());
  for (const auto& [k, b] : buffers_)
    if (b.defined() && std::find(non_persistent_.begin(), non_persistent_.end(), k) == non_persistent_.end())
      out.insert(prefix + k, b.detach());
  for (const auto& [k, c] : children_) c->collect_state(prefix + k + ".", out);
}

StateDict Module::state_dict() const {
  StateDict out;
  collect_state("", out);
  return out;
}

LoadStateDictResult Module::load_state_dict(const StateDict& dict, bool strict) {
  StateDict own = state_dict();
  LoadStateDictResult r;
  std::vector<std::string> problems;
  for (const auto& [k, t] : own) {
    const Tensor* src = dict.find(k);
    if (!src) {
      r.missing_keys.push_back(k);
    } else if (!src->defined()) {
      problems.push_back(fmt::format("value for '{}' is an undefined tensor", k));
    } else if (src->shape() != t.shape()) {
      problems.push_back(fmt::format("shape mismatch for '{}': expected {}, got {}", k, shape_str(t.shape()),
                                     shape_str(src->shape())));
    }
  }
  for (const auto& [k, t] : dict)
    if (!own.contains(k)) r.unexpected_keys.push_back(k);
  for (const auto& [k, v] : dict.scalars) r.unexpected_keys.push_back(k);
  if (strict && !r.missing_keys.empty())
    problems.insert(problems.begin(), "missing keys: " + join_quoted(r.missing_keys));
  if (strict && !r.unexpected_keys.empty())
    problems.insert(problems.begin() + (strict && !r.missing_keys.empty() ? 1 : 0),
                    "unexpected keys: " + join_quoted(r.unexpected_keys));
  if (!problems.empty()) {
    std::string msg;
    for (std::size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw_error("load_state_dict", msg);
  }
  NoGradGuard ng;
  for (auto& [k, t] : own)
    if (const Tensor* src = dict.find(k)) t.copy_(*src);
  return r;
}

// ---- printing ----

void Module::print_tree(std::string& out, const std::string& label, int depth) const {
  std::string indent(static_cast<std::size_t>(2 * depth), ' ');
  std::string extra = extra_repr();
  out += indent + (label.empty() ? "" : label + ": ") + name() + (extra.empty() ? "" : "(" + extra + ")");
  if (depth > 0) {
    std::int64_t n = num_parameters();
    if (n > 0) out += " (" + count_str(n) + ")";
  }
  out += "\n";
  auto tags = [](const Tensor& t) {
    std::string s;
    if (t.dtype() != kFloat32) s.append(" ").append(dtype_name(t.dtype()));
    return s;
  };
  for (const auto& [k, p] : parameters_)
    if (p.defined())
      out += indent + "  " + k + " " + shape_str(p.shape()) + tags(p) + (p.requires_grad() ? "" : " frozen") + "\n";
  for (const auto& [k, b] : buffers_)
    if (b.defined()) out += indent + "  " + k + " " + shape_str(b.shape()) + tags(b) + " buffer\n";
  for (const auto& [k, c] : children_) c->print_tree(out, k, depth + 1);
}

std::string Module::str() const {
  std::string out;
  print_tree(out, "", 0);
  std::int64_t total = num_parameters(), trainable = num_parameters(true);
  out += "total: " + count_str(total);
  if (trainable != total) out += " (" + group_digits(trainable) + " trainable)";
  return out;
}

std::ostream& operator<<(std::ostream& os, const Module& m) { return os << m.str(); }

}  // namespace kiln::nn
