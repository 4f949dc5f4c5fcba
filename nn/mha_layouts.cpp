// nn::MultiHeadAttention weights in other frameworks' layouts: torch.nn.MultiheadAttention's
// state_dict and MegEngine's packed io_weight_bias (declared in multihead_attention.hpp).
#include <vector>

#include "multihead_attention.hpp"

namespace kiln::nn {

namespace {

constexpr const char* kTorch = "MultiHeadAttention.torch_state";
constexpr const char* kMge = "MultiHeadAttention.megengine_io_weight_bias";

struct Entry {
  std::string key;
  Shape shape;
};

// Keys and shapes of torch.nn.MultiheadAttention's state_dict (batch_first or not; its order).
std::vector<Entry> torch_layout(const MultiHeadAttentionImpl& m) {
  const auto& o = m.options;
  const std::int64_t E = o.embed_dim(), H = m.num_heads();
  KILN_CHECK(m.num_kv_heads() == H, kTorch,
             "torch.nn.MultiheadAttention has no grouped kv heads, got num_kv_heads={} and num_heads={}",
             m.num_kv_heads(), H);
  KILN_CHECK(m.head_dim() * H == E && m.v_head_dim() == m.head_dim(), kTorch,
             "torch.nn.MultiheadAttention needs head_dim * num_heads == embed_dim and v_head_dim == head_dim, got "
             "head_dim={}, v_head_dim={}, num_heads={}, embed_dim={}",
             m.head_dim(), m.v_head_dim(), H, E);
  KILN_CHECK(m.out_dim() == E, kTorch, "torch.nn.MultiheadAttention needs out_dim == embed_dim, got {} and {}",
             m.out_dim(), E);
  const bool qb = m.q_proj->bias.defined(), kb = m.k_proj->bias.defined(), vb = m.v_proj->bias.defined(),
             ob = m.out_proj->bias.defined();
  KILN_CHECK(qb == kb && kb == vb && vb == ob, kTorch,
             "torch.nn.MultiheadAttention has all four projection biases or none, got q={} k={} v={} out={}", qb, kb,
             vb, ob);
  KILN_CHECK(o.qk_norm() == Norm::None, kTorch, "torch.nn.MultiheadAttention has no qk_norm");
  KILN_CHECK(!o.attention_sinks(), kTorch, "torch.nn.MultiheadAttention has no attention sinks");
  std::vector<Entry> l;
  if (m.kdim() == E && m.vdim() == E) {
    l.push_back({"in_proj_weight", {3 * E, E}});
  } else {
    l.push_back({"q_proj_weight", {E, E}});
    l.push_back({"k_proj_weight", {E, m.kdim()}});
    l.push_back({"v_proj_weight", {E, m.vdim()}});
  }
  if (qb) l.push_back({"in_proj_bias", {3 * E}});
  if (o.add_bias_kv()) {
    l.push_back({"bias_k", {1, 1, E}});
    l.push_back({"bias_v", {1, 1, E}});
  }
  l.push_back({"out_proj.weight", {E, E}});
  if (ob) l.push_back({"out_proj.bias", {E}});
  return l;
}

std::string join_keys(const std::vector<std::string>& keys) {
  std::string s;
  for (const auto& k : keys) s += (s.empty() ? "" : ", ") + k;
  return "[" + s + "]";
}

// MegEngine's io_weight_bias pieces in order: weights (in, out) row-major, then the biases.
struct MgePiece {
  Tensor* param;  // the kiln parameter (weights are stored transposed there)
  Shape shape;    // as packed
  bool transposed;
};

std::vector<MgePiece> megengine_layout(MultiHeadAttentionImpl& m) {
  const auto& o = m.options;
  KILN_CHECK(m.num_kv_heads() == m.num_heads(), kMge,
             "MegEngine's packed layout has no grouped kv heads, got num_kv_heads={} and num_heads={}",
             m.num_kv_heads(), m.num_heads());
  KILN_CHECK(o.qk_norm() == Norm::None, kMge, "MegEngine's packed layout has no qk_norm parameters");
  KILN_CHECK(!o.attention_sinks(), kMge, "MegEngine's packed layout has no attention sinks");
  std::vector<MgePiece> l;
  for (Linear* p : {&m.q_proj, &m.k_proj, &m.v_proj, &m.out_proj}) {
    Tensor& w = (*p)->weight;
    l.push_back({&w, {w.size(1), w.size(0)}, true});
  }
  for (Linear* p : {&m.q_proj, &m.k_proj, &m.v_proj, &m.out_proj})
    if ((*p)->bias.defined()) l.push_back({&(*p)->bias, (*p)->bias.shape(), false});
  return l;
}

}  // namespace

OrderedDict<Tensor> MultiHeadAttentionImpl::to_torch_state() const {
  const auto layout = torch_layout(*this);
  NoGradGuard ng;
  OrderedDict<Tensor> sd;
  for (const Entry& e : layout) {
    Tensor t;
    if (e.key == "in_proj_weight") t = cat({q_proj->weight, k_proj->weight, v_proj->weight}, 0);
    else if (e.key == "q_proj_weight") t = q_proj->weight.clone();
    else if (e.key == "k_proj_weight") t = k_proj->weight.clone();
    else if (e.key == "v_proj_weight") t = v_proj->weight.clone();
    else if (e.key == "in_proj_bias") t = cat({q_proj->bias, k_proj->bias, v_proj->bias}, 0);
    else if (e.key == "bias_k") t = bias_k.clone();
    else if (e.key == "bias_v") t = bias_v.clone();
    else if (e.key == "out_proj.weight") t = out_proj->weight.clone();
    else t = out_proj->bias.clone();
    sd.insert(e.key, t.detach());
  }
  return sd;
}

void MultiHeadAttentionImpl::load_torch_state(const OrderedDict<Tensor>& state) {
  const auto layout = torch_layout(*this);
  std::vector<std::string> missing, unexpected, bad;
  for (const Entry& e : layout) {
    const Tensor* t = state.find(e.key);
    if (!t || !t->defined()) missing.push_back(e.key);
    else if (t->shape() != e.shape)
      bad.push_back(fmt::format("{}: expected {}, got {}", e.key, shape_str(e.shape), shape_str(t->shape())));
  }
  for (const auto& [key, _] : state) {
    bool known = false;
    for (const Entry& e : layout) known = known || e.key == key;
    if (!known) unexpected.push_back(key);
  }
  KILN_CHECK(missing.empty() && unexpected.empty(), kTorch,
             "keys do not match torch.nn.MultiheadAttention's for this module (embed_dim={}, kdim={}, vdim={}, "
             "bias={}, add_bias_kv={}): missing {}, unexpected {}",
             options.embed_dim(), kdim(), vdim(), q_proj->bias.defined(), options.add_bias_kv(), join_keys(missing),
             join_keys(unexpected));
  KILN_CHECK(bad.empty(), kTorch, "shape mismatch: {}", join_keys(bad));
  const std::int64_t E = options.embed_dim();
  NoGradGuard ng;
  for (const Entry& e : layout) {
    const Tensor& t = state[e.key];
    if (e.key == "in_proj_weight" || e.key == "in_proj_bias") {
      const bool w = e.key == "in_proj_weight";
      Linear* projs[] = {&q_proj, &k_proj, &v_proj};
      for (std::int64_t i = 0; i < 3; ++i) (w ? (*projs[i])->weight : (*projs[i])->bias).copy_(t.narrow(0, i * E, E));
    } else if (e.key == "q_proj_weight") q_proj->weight.copy_(t);
    else if (e.key == "k_proj_weight") k_proj->weight.copy_(t);
    else if (e.key == "v_proj_weight") v_proj->weight.copy_(t);
    else if (e.key == "bias_k") bias_k.copy_(t);
    else if (e.key == "bias_v") bias_v.copy_(t);
    else if (e.key == "out_proj.weight") out_proj->weight.copy_(t);
    else out_proj->bias.copy_(t);
  }
}

Tensor MultiHeadAttentionImpl::to_megengine_io_weight_bias() const {
  auto layout = megengine_layout(const_cast<MultiHeadAttentionImpl&>(*this));
  NoGradGuard ng;
  std::vector<Tensor> flat;
  for (const MgePiece& p : layout) flat.push_back(reshape(p.transposed ? p.param->t() : *p.param, {-1}));
  Tensor all = cat(flat, 0);
  return reshape(all, {1, all.numel()}).detach();
}

void MultiHeadAttentionImpl::load_megengine_io_weight_bias(const Tensor& io) {
  auto layout = megengine_layout(*this);
  std::int64_t n = 0;
  std::string parts;
  for (const MgePiece& p : layout) {
    n += numel_of(p.shape);
    parts += (parts.empty() ? "" : " + ") + shape_str(p.shape);
  }
  KILN_CHECK(io.defined() && io.numel() == n && (io.dim() == 1 || (io.dim() == 2 && io.size(0) == 1)), kMge,
             "expected shape (1, {}) = W_q, W_k, W_v, W_o, then the biases: {}; got {}", n, parts,
             io.defined() ? shape_str(io.shape()) : std::string("undefined"));
  Tensor flat = reshape(io.detach(), {n});
  NoGradGuard ng;
  std::int64_t at = 0;
  for (const MgePiece& p : layout) {
    const std::int64_t c = numel_of(p.shape);
    Tensor piece = reshape(flat.narrow(0, at, c), p.shape);
    p.param->copy_(p.transposed ? piece.t() : piece);
    at += c;
  }
}

}  // namespace kiln::nn
