#!/usr/bin/python3
"""Writes the golden files for kiln's nn::MultiHeadAttention conformance tests (tests/nn/test_mha_golden.cpp).

Run with Debian's Python, which has torch (1.13):  /usr/bin/python3 tools/mha_goldens.py
Outputs tests/data/mha_<case>.txt. CI never runs this; the generated files are committed.

Each case builds torch.nn.MultiheadAttention(batch_first=True) in float64 with a fixed seed and
random (non-default) parameters, runs it, and backpropagates the scalar loss
    sum(output * gout) [+ sum(weights * gw) when the case returns weights].
Grouped-query cases (which torch 1.13's module cannot express) are computed by hand in torch with
repeat_interleave over the key/value heads.

File format (text, one item per line):
    # comment
    meta <key> <int or float>           options of the case (embed_dim, num_heads, ...)
    tensor <name> <ndim> <d0> ... <dn-1>
    <all values, row-major, space-separated, Python repr (exact float64 round trip; inf as 'inf')>
Names: query/key/value (inputs; key == value == query for self-attention), q_proj.weight ...
out_proj.bias (kiln's parameter names, PyTorch's (out, in) layout, split from in_proj_weight),
lengths (valid key lengths, as floats), keep_mask / float_mask (kiln's mask: bool as 0/1, true =
may attend), gout, gw, output, weights (per head, B H T S), weights_avg, and grad.<name> for every
input and parameter.

Masks: kiln's bool polarity is the opposite of PyTorch's (kiln true = may attend, torch True =
masked out); the file holds kiln's polarity and the script converts for torch. Causal cases pass
kiln's is_causal (meta causal 1) and torch a mask built with kiln's bottom-right alignment.
"""
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
DT = torch.float64


def q32(t):
    """Rounds to multiples of 1/32: inputs and parameters print short and are exact in float64."""
    return torch.round(t * 32) / 32


def fmt_values(t):
    return " ".join(repr(float(v)) for v in t.detach().reshape(-1).tolist())


class Golden:
    def __init__(self, name):
        self.name = name
        self.lines = [f"# kiln MultiHeadAttention golden '{name}', written by tools/mha_goldens.py (torch {torch.__version__})"]

    def meta(self, **kw):
        for k, v in kw.items():
            self.lines.append(f"meta {k} {int(v) if isinstance(v, bool) else v}")

    def tensor(self, name, t):
        t = t.detach()
        if t.dtype == torch.bool:
            t = t.to(DT)
        self.lines.append(f"tensor {name} {t.dim()} " + " ".join(str(s) for s in t.shape))
        self.lines.append(fmt_values(t))

    def write(self):
        path = os.path.join(OUT, f"mha_{self.name}.txt")
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


def causal_keep(T, S):
    """kiln's bottom-right causal keep-mask: query i may attend key j <= S - T + i."""
    i = torch.arange(T).unsqueeze(1)
    j = torch.arange(S).unsqueeze(0)
    return j <= (S - T + i)


def torch_case(name, E, H, B, T, S, kdim=None, vdim=None, bias=True, self_attn=False, lengths=None,
               keep_mask=None, float_mask=None, causal=False, with_weights=True, seed=0):
    torch.manual_seed(seed)
    kdim_ = kdim or E
    vdim_ = vdim or E
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True).to(DT)
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(q32(torch.randn_like(p) * 0.4))
    if self_attn:
        query = q32(torch.randn(B, T, E, dtype=DT)).requires_grad_()
        key = value = query
    else:
        query = q32(torch.randn(B, T, E, dtype=DT)).requires_grad_()
        key = q32(torch.randn(B, S, kdim_, dtype=DT)).requires_grad_()
        value = q32(torch.randn(B, S, vdim_, dtype=DT)).requires_grad_()

    # kiln's keep semantics -> torch's masks
    kpm = None
    if lengths is not None:
        kpm = torch.arange(S).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)  # True = padded
    attn = None
    keep = None
    if keep_mask is not None:
        keep = keep_mask
    if causal:
        keep = causal_keep(T, S) if keep is None else keep & causal_keep(T, S)
    if float_mask is not None:
        attn = float_mask.clone()
        if keep is not None:
            attn = attn.masked_fill(~keep, float("-inf"))
        if attn.dim() == 4:  # (B, H, T, S) -> torch's (B * H, T, S)
            attn = attn.reshape(B * H, T, S)
    elif keep is not None:
        attn = ~keep

    out, w = mha(query, key, value, key_padding_mask=kpm, need_weights=True, attn_mask=attn,
                 average_attn_weights=False)
    gout = q32(torch.randn_like(out))
    loss = (out * gout).sum()
    gw = None
    if with_weights:
        gw = q32(torch.randn_like(w))
        loss = loss + (w * gw).sum()
    loss.backward()
    with torch.no_grad():
        _, w_avg = mha(query, key, value, key_padding_mask=kpm, need_weights=True, attn_mask=attn,
                       average_attn_weights=True)

    g = Golden(name)
    g.meta(embed_dim=E, num_heads=H, num_kv_heads=H, kdim=kdim_, vdim=vdim_, bias=bias, self_attn=self_attn,
           causal=causal, with_weights=with_weights)
    g.tensor("query", query)
    if not self_attn:
        g.tensor("key", key)
        g.tensor("value", value)
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        gwq, gwk, gwv = mha.in_proj_weight.grad.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        gwq, gwk, gwv = wq.grad, wk.grad, wv.grad
    params = {"q_proj.weight": (wq, gwq), "k_proj.weight": (wk, gwk), "v_proj.weight": (wv, gwv),
              "out_proj.weight": (mha.out_proj.weight, mha.out_proj.weight.grad)}
    if bias:
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        gbq, gbk, gbv = mha.in_proj_bias.grad.chunk(3)
        params.update({"q_proj.bias": (bq, gbq), "k_proj.bias": (bk, gbk), "v_proj.bias": (bv, gbv),
                       "out_proj.bias": (mha.out_proj.bias, mha.out_proj.bias.grad)})
    for n, (p, _) in params.items():
        g.tensor(n, p)
    if lengths is not None:
        g.tensor("lengths", torch.tensor(lengths, dtype=DT))
    if keep_mask is not None:
        g.tensor("keep_mask", keep_mask)
    if float_mask is not None:
        g.tensor("float_mask", float_mask)
    g.tensor("gout", gout)
    if with_weights:
        g.tensor("gw", gw)
    g.tensor("output", out)
    g.tensor("weights", w)
    g.tensor("weights_avg", w_avg)
    g.tensor("grad.query", query.grad)
    if not self_attn:
        g.tensor("grad.key", key.grad)
        g.tensor("grad.value", value.grad)
    for n, (_, gp) in params.items():
        g.tensor("grad." + n, gp)
    g.write()


def gqa_case(name, E, H, Hkv, B, T, S, lengths=None, causal=False, seed=0):
    """Grouped-query attention by hand: kv head j serves query heads j*G .. j*G+G-1."""
    torch.manual_seed(seed)
    D = E // H
    G = H // Hkv
    wq = q32(torch.randn(H * D, E, dtype=DT) * 0.4).requires_grad_()
    wk = q32(torch.randn(Hkv * D, E, dtype=DT) * 0.4).requires_grad_()
    wv = q32(torch.randn(Hkv * D, E, dtype=DT) * 0.4).requires_grad_()
    wo = q32(torch.randn(E, H * D, dtype=DT) * 0.4).requires_grad_()
    bq = q32(torch.randn(H * D, dtype=DT) * 0.4).requires_grad_()
    bk = q32(torch.randn(Hkv * D, dtype=DT) * 0.4).requires_grad_()
    bv = q32(torch.randn(Hkv * D, dtype=DT) * 0.4).requires_grad_()
    bo = q32(torch.randn(E, dtype=DT) * 0.4).requires_grad_()
    query = q32(torch.randn(B, T, E, dtype=DT)).requires_grad_()
    key = q32(torch.randn(B, S, E, dtype=DT)).requires_grad_()
    value = q32(torch.randn(B, S, E, dtype=DT)).requires_grad_()

    q = (query @ wq.T + bq).reshape(B, T, H, D).transpose(1, 2)
    k = (key @ wk.T + bk).reshape(B, S, Hkv, D).transpose(1, 2).repeat_interleave(G, dim=1)
    v = (value @ wv.T + bv).reshape(B, S, Hkv, D).transpose(1, 2).repeat_interleave(G, dim=1)
    logits = (q @ k.transpose(-1, -2)) / D ** 0.5
    keep = torch.ones(B, 1, T, S, dtype=torch.bool)
    if lengths is not None:
        keep = keep & (torch.arange(S).view(1, 1, 1, S) < torch.tensor(lengths).view(B, 1, 1, 1))
    if causal:
        keep = keep & causal_keep(T, S)
    w = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(B, T, H * D) @ wo.T + bo
    gout = q32(torch.randn_like(out))
    gw = q32(torch.randn_like(w))
    ((out * gout).sum() + (w * gw).sum()).backward()

    g = Golden(name)
    g.meta(embed_dim=E, num_heads=H, num_kv_heads=Hkv, kdim=E, vdim=E, bias=True, self_attn=False, causal=causal,
           with_weights=True)
    g.tensor("query", query)
    g.tensor("key", key)
    g.tensor("value", value)
    params = {"q_proj.weight": wq, "k_proj.weight": wk, "v_proj.weight": wv, "out_proj.weight": wo,
              "q_proj.bias": bq, "k_proj.bias": bk, "v_proj.bias": bv, "out_proj.bias": bo}
    for n, p in params.items():
        g.tensor(n, p)
    if lengths is not None:
        g.tensor("lengths", torch.tensor(lengths, dtype=DT))
    g.tensor("gout", gout)
    g.tensor("gw", gw)
    g.tensor("output", out)
    g.tensor("weights", w)
    g.tensor("weights_avg", w.mean(dim=1))
    for n, t in (("query", query), ("key", key), ("value", value)):
        g.tensor("grad." + n, t.grad)
    for n, p in params.items():
        g.tensor("grad." + n, p.grad)
    g.write()


def layout_case(name, E, H, B, T, S, kdim=None, vdim=None, bias=True, add_bias_kv=False, add_zero_attn=False,
                lengths=None, keep_mask=None, causal=False, seed=0):
    """torch.nn.MultiheadAttention's own state (its keys and layout) for load_torch_state, with the
    MegEngine io_weight_bias packed from the same weights (Y = X W order: W_q, W_k, W_v, W_o as
    (in, out) row-major, then b_q, b_k, b_v, b_o), outputs, per-head weights and gradients.
    Tensors: torch.<state key>, torch_grad.<state key>, megengine.io_weight_bias and its gradient
    megengine_grad.io_weight_bias (the same packing applied to torch's gradients)."""
    torch.manual_seed(seed)
    kdim_ = kdim or E
    vdim_ = vdim or E
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
                                      kdim=kdim, vdim=vdim, batch_first=True).to(DT)
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(q32(torch.randn_like(p) * 0.4))
    query = q32(torch.randn(B, T, E, dtype=DT)).requires_grad_()
    key = q32(torch.randn(B, S, kdim_, dtype=DT)).requires_grad_()
    value = q32(torch.randn(B, S, vdim_, dtype=DT)).requires_grad_()
    kpm = None
    if lengths is not None:
        kpm = torch.arange(S).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)  # True = padded
    keep = keep_mask
    if causal:
        keep = causal_keep(T, S) if keep is None else keep & causal_keep(T, S)
    attn = None if keep is None else ~keep  # torch pads it with an attendable column per extra key
    out, w = mha(query, key, value, key_padding_mask=kpm, need_weights=True, attn_mask=attn,
                 average_attn_weights=False)
    gout = q32(torch.randn_like(out))
    gw = q32(torch.randn_like(w))
    ((out * gout).sum() + (w * gw).sum()).backward()

    def megengine_pack(get):
        if mha._qkv_same_embed_dim:
            wq, wk, wv = get("in_proj_weight").chunk(3)
        else:
            wq, wk, wv = get("q_proj_weight"), get("k_proj_weight"), get("v_proj_weight")
        parts = [wq.T, wk.T, wv.T, get("out_proj.weight").T]
        if bias:
            parts += list(get("in_proj_bias").chunk(3)) + [get("out_proj.bias")]
        return torch.cat([p.reshape(-1) for p in parts]).reshape(1, -1)

    params = dict(mha.named_parameters())
    g = Golden(name)
    g.meta(embed_dim=E, num_heads=H, kdim=kdim_, vdim=vdim_, bias=bias, add_bias_kv=add_bias_kv,
           add_zero_attn=add_zero_attn, causal=causal)
    g.tensor("query", query)
    g.tensor("key", key)
    g.tensor("value", value)
    for k, p in mha.state_dict().items():
        g.tensor("torch." + k, p)
        g.tensor("torch_grad." + k, params[k].grad)
    g.tensor("megengine.io_weight_bias", megengine_pack(lambda k: params[k].detach()))
    g.tensor("megengine_grad.io_weight_bias", megengine_pack(lambda k: params[k].grad))
    if lengths is not None:
        g.tensor("lengths", torch.tensor(lengths, dtype=DT))
    if keep_mask is not None:
        g.tensor("keep_mask", keep_mask)
    g.tensor("gout", gout)
    g.tensor("gw", gw)
    g.tensor("output", out)
    g.tensor("weights", w)
    g.tensor("grad.query", query.grad)
    g.tensor("grad.key", key.grad)
    g.tensor("grad.value", value.grad)
    g.write()


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    # self-attention, weights in the loss
    torch_case("self", E=8, H=2, B=2, T=5, S=5, self_attn=True, seed=1)
    # different key/value widths, cross-attention
    torch_case("kvdim", E=8, H=2, B=2, T=4, S=6, kdim=6, vdim=5, seed=2)
    # key padding (valid lengths), no bias
    torch_case("padding_nobias", E=8, H=2, B=3, T=4, S=6, bias=False, lengths=[6, 3, 1], seed=3)
    # bool attention mask (T, S)
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(4)) > 0.4
    keep[:, 0] = True  # every row keeps something (torch gives NaN rows otherwise)
    torch_case("bool_mask", E=8, H=2, B=2, T=4, S=6, keep_mask=keep, seed=4)
    # float mask per (batch, head) with -inf entries, plus padding
    fm = q32(torch.randn(2, 2, 4, 6, dtype=DT, generator=torch.Generator().manual_seed(5)))
    fm[0, 1, 2, 3] = float("-inf")
    fm[1, 0, :, 1] = float("-inf")
    torch_case("float_mask", E=8, H=2, B=2, T=4, S=6, float_mask=fm, lengths=[5, 6], seed=5)
    # causal self-attention (T == S)
    torch_case("causal_self", E=8, H=2, B=2, T=5, S=5, self_attn=True, causal=True, seed=6)
    # causal cross-attention, bottom-right aligned (T < S), with padding that keeps every row alive
    torch_case("causal_padding", E=8, H=4, B=2, T=3, S=5, causal=True, lengths=[5, 4], with_weights=False, seed=7)
    # grouped-query (4 query heads over 2 kv heads) with padding; multi-query (1 kv head), causal
    gqa_case("gqa", E=8, H=4, Hkv=2, B=2, T=4, S=5, lengths=[5, 3], seed=8)
    gqa_case("mqa_causal", E=8, H=4, Hkv=1, B=2, T=4, S=4, causal=True, seed=9)
    # torch's own state layouts (tests/nn/test_mha_layouts.cpp): packed in_proj_weight, separate
    # q/k/v_proj_weight (kdim/vdim differ), no bias, add_bias_kv, add_zero_attn, both with causal
    layout_case("torch_packed", E=8, H=2, B=2, T=4, S=5, lengths=[5, 3], seed=10)
    layout_case("torch_separate", E=8, H=2, B=2, T=3, S=4, kdim=6, vdim=5, seed=11)
    layout_case("torch_nobias", E=6, H=3, B=2, T=3, S=3, bias=False, seed=12)
    keep = torch.rand(4, 5, generator=torch.Generator().manual_seed(13)) > 0.4
    layout_case("torch_bias_kv", E=8, H=2, B=2, T=4, S=5, add_bias_kv=True, lengths=[5, 2], keep_mask=keep, seed=13)
    layout_case("torch_zero_attn", E=8, H=4, B=2, T=3, S=4, kdim=5, vdim=7, add_zero_attn=True, lengths=[4, 0],
                seed=14)
    layout_case("torch_bias_kv_zero_attn_causal", E=8, H=2, B=2, T=3, S=5, add_bias_kv=True, add_zero_attn=True,
                causal=True, lengths=[5, 4], seed=15)


if __name__ == "__main__":
    main()
