#!/usr/bin/python3
"""Writes the golden files for kiln's optimizer, scheduler and clipping tests (tests/optim/).

Run with Debian's Python, which has torch (1.13):  /usr/bin/python3 tools/optim_goldens.py
Outputs tests/data/optim/{sgd,adam,adamw,rmsprop,adagrad,lion,schedulers,clip}.txt. CI never runs this; the generated
files are committed.

File format (text, one item per line; the same as tests/data/mha_*.txt):
    # comment
    meta <key> <number>                 (bools as 0/1)
    tensor <name> <ndim> <d0> ... <dn-1>
    <all values, row-major, space-separated, Python repr (exact float64 round trip)>

<optimizer>.txt: the problem is two float64 parameters, w (3, 4) and b (5,), and the
non-quadratic loss
    loss = sum(A * sin(w)) + 0.25 * sum((b * b - c) ** 2)
with A (3, 4) and c (5,) given as tensors `A`, `c`, `w0`, `b0`. Each case <case> runs STEPS
steps of zero_grad / backward / step and records the parameters after every step:
`<case>.w` (STEPS, 3, 4) and `<case>.b` (STEPS, 5). Its options are `meta <case>.optimizer
<code>` (see OPTIMIZERS), `meta <case>.groups 1|2` (1: one group [w, b]; 2: [w] and [b]) and
`meta <case>.g<k>.<option> <value>` for every option of every group (kiln's option names; betas
as beta1/beta2). torch has no Lion; it is written here from the paper's pseudo-code.

schedulers.txt: an SGD optimizer with two groups (base lrs `meta base_lr.0/1`); each case
<case> records get_last_lr() after construction and after every step as `<case>.lr`
(steps + 1, 2), with its arguments as `meta <case>.<arg>`. ReduceLROnPlateau cases also have
`<case>.metrics` (the value passed to each step) and record the lr after each step.

clip.txt: gradients `<case>.g0` (3, 4) and `<case>.g1` (5,) with `meta <case>.max_norm`,
`<case>.norm_type` (inf as 'inf'), results `<case>.total` (1,) and the clipped `<case>.out0`,
`<case>.out1`; value-clipping cases have `<case>.clip_value` and outputs only.
"""
import math
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "optim")
DT = torch.float64
STEPS = 12
OPTIMIZERS = {"sgd": 0, "adam": 1, "adamw": 2, "rmsprop": 3, "adagrad": 4, "lion": 5}


def q(t, k=32):
    """Rounds to multiples of 1/k so inputs print short and are exact in float64."""
    return torch.round(t * k) / k


def fmt_values(t):
    return " ".join(repr(float(v)) for v in t.detach().reshape(-1).tolist())


class Golden:
    def __init__(self, name, what):
        self.name = name
        self.lines = [f"# kiln {what} goldens, written by tools/optim_goldens.py (torch {torch.__version__})"]

    def meta(self, key, v):
        self.lines.append(f"meta {key} {int(v) if isinstance(v, bool) else v}")

    def tensor(self, name, t):
        t = torch.as_tensor(t, dtype=DT).detach()
        self.lines.append(f"tensor {name} {t.dim()} " + " ".join(str(s) for s in t.shape))
        self.lines.append(fmt_values(t))

    def write(self):
        os.makedirs(OUT, exist_ok=True)
        path = os.path.join(OUT, f"{self.name}.txt")
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


# ---------------- optimizers ----------------

class Lion(torch.optim.Optimizer):
    """Lion as in Chen et al. 2023 (Algorithm 2) with decoupled weight decay."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                st = self.state[p]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p)
                m = st["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + g * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(g, alpha=1 - b2)


# kiln option name -> torch keyword, per optimizer; betas are split into beta1/beta2.
OPTION_NAMES = {
    "sgd": ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"],
    "adam": ["lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize"],
    "adamw": ["lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize"],
    "rmsprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"],
    "adagrad": ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"],
    "lion": ["lr", "beta1", "beta2", "weight_decay", "maximize"],
}
DEFAULTS = {
    "sgd": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False),
    "adamw": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
    "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
    "adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False),
    "lion": dict(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False),
}
CTOR = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad, "lion": Lion,
}


def torch_kwargs(opts):
    kw = dict(opts)
    if "beta1" in kw:
        kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
    return kw


def problem():
    g = torch.Generator().manual_seed(5)
    A = q(torch.randn(3, 4, generator=g, dtype=DT))
    c = q(torch.rand(5, generator=g, dtype=DT) * 2)
    w0 = q(torch.randn(3, 4, generator=g, dtype=DT))
    b0 = q(torch.randn(5, generator=g, dtype=DT))
    return A, c, w0, b0


def loss_fn(A, c, w, b):
    return (A * torch.sin(w)).sum() + 0.25 * ((b * b - c) ** 2).sum()


def optimizer_case(G, name, kind, groups):
    """groups: list of option overrides (1 group: [w, b]; 2 groups: [w], [b])."""
    A, c, w0, b0 = problem()
    w = w0.clone().requires_grad_()
    b = b0.clone().requires_grad_()
    full = [dict(DEFAULTS[kind], **o) for o in groups]
    if len(groups) == 1:
        param_groups = [dict(params=[w, b], **torch_kwargs(full[0]))]
    else:
        param_groups = [dict(params=[w], **torch_kwargs(full[0])), dict(params=[b], **torch_kwargs(full[1]))]
    # Defaults = group 0's options: torch's Adagrad takes initial_accumulator_value from the
    # constructor, not from the groups.
    opt = CTOR[kind](param_groups, **torch_kwargs(full[0]))
    ws, bs = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(A, c, w, b).backward()
        opt.step()
        ws.append(w.detach().clone())
        bs.append(b.detach().clone())
    G.meta(f"{name}.optimizer", OPTIMIZERS[kind])
    G.meta(f"{name}.groups", len(groups))
    for k, o in enumerate(full):
        for key in OPTION_NAMES[kind]:
            G.meta(f"{name}.g{k}.{key}", o[key])
    G.tensor(f"{name}.w", torch.stack(ws))
    G.tensor(f"{name}.b", torch.stack(bs))


def optimizers():
    cases = [
        ("sgd_plain", "sgd", [dict(lr=0.1)]),
        ("sgd_momentum", "sgd", [dict(lr=0.05, momentum=0.9)]),
        ("sgd_dampening_wd", "sgd", [dict(lr=0.05, momentum=0.8, dampening=0.5, weight_decay=0.01)]),
        ("sgd_nesterov_wd", "sgd", [dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)]),
        ("sgd_maximize", "sgd", [dict(lr=0.005, momentum=0.5, maximize=True)]),
        ("sgd_groups", "sgd", [dict(lr=0.05, momentum=0.9), dict(lr=0.2, momentum=0.0, weight_decay=0.05)]),
        ("adam_default", "adam", [dict(lr=0.05)]),
        ("adam_wd_amsgrad", "adam", [dict(lr=0.05, weight_decay=0.1, amsgrad=True)]),
        ("adam_betas_eps", "adam", [dict(lr=0.1, beta1=0.8, beta2=0.9, eps=1e-3)]),
        ("adam_maximize", "adam", [dict(lr=0.02, maximize=True)]),
        ("adam_groups", "adam", [dict(lr=0.05), dict(lr=0.01, beta1=0.5, beta2=0.6, weight_decay=0.1, amsgrad=True)]),
        ("adamw_default", "adamw", [dict(lr=0.05)]),
        ("adamw_wd_amsgrad", "adamw", [dict(lr=0.05, beta1=0.9, beta2=0.95, weight_decay=0.5, amsgrad=True)]),
        ("adamw_groups", "adamw", [dict(lr=0.05, weight_decay=0.1), dict(lr=0.05, weight_decay=0.0)]),
        ("rmsprop_default", "rmsprop", [dict(lr=0.01)]),
        ("rmsprop_centered", "rmsprop", [dict(lr=0.01, alpha=0.9, centered=True)]),
        ("rmsprop_momentum_wd", "rmsprop", [dict(lr=0.01, momentum=0.9, weight_decay=0.1)]),
        ("rmsprop_centered_momentum", "rmsprop", [dict(lr=0.005, alpha=0.95, momentum=0.5, centered=True, eps=1e-4)]),
        ("adagrad_default", "adagrad", [dict(lr=0.1)]),
        ("adagrad_decay_wd_init", "adagrad",
         [dict(lr=0.1, lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-6)]),
        ("adagrad_maximize", "adagrad", [dict(lr=0.05, maximize=True)]),
        ("lion_default", "lion", [dict(lr=0.01)]),
        ("lion_wd_betas", "lion", [dict(lr=0.02, beta1=0.95, beta2=0.98, weight_decay=0.1)]),
        ("lion_groups", "lion", [dict(lr=0.01), dict(lr=0.03, beta1=0.5, weight_decay=0.5, maximize=True)]),
    ]
    A, c, w0, b0 = problem()
    for kind in OPTIMIZERS:
        G = Golden(kind, f"{kind} trajectory")
        G.meta("steps", STEPS)
        G.tensor("A", A)
        G.tensor("c", c)
        G.tensor("w0", w0)
        G.tensor("b0", b0)
        for name, k, groups in cases:
            if k == kind:
                optimizer_case(G, name, kind, groups)
        G.write()


# ---------------- schedulers ----------------

BASE_LRS = [0.1, 0.02]


def sched_opt():
    w = torch.zeros(2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    return torch.optim.SGD([dict(params=[w], lr=BASE_LRS[0]), dict(params=[b], lr=BASE_LRS[1])], lr=BASE_LRS[0],
                           momentum=0.9)


def record(sched, steps):
    lrs = [sched.get_last_lr()]
    for _ in range(steps):
        sched.opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
    return torch.tensor(lrs, dtype=DT)


def sched_case(G, name, make, steps, **args):
    opt = sched_opt()
    s = make(opt)
    s.opt = opt
    for k, v in args.items():
        G.meta(f"{name}.{k}", v)
    G.meta(f"{name}.steps", steps)
    lrs = record(s, steps)
    G.tensor(f"{name}.lr", lrs)
    return lrs


def schedulers():
    S = torch.optim.lr_scheduler
    G = Golden("schedulers", "learning-rate schedule")
    for i, lr in enumerate(BASE_LRS):
        G.meta(f"base_lr.{i}", lr)
    sched_case(G, "step", lambda o: S.StepLR(o, step_size=3, gamma=0.5), 12, step_size=3, gamma=0.5)
    sched_case(G, "multistep", lambda o: S.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3), 12, gamma=0.3,
               **{"milestone.0": 2, "milestone.1": 5, "milestone.2": 5, "milestone.3": 9, "num_milestones": 4})
    sched_case(G, "exponential", lambda o: S.ExponentialLR(o, gamma=0.9), 12, gamma=0.9)
    sched_case(G, "cosine", lambda o: S.CosineAnnealingLR(o, T_max=8, eta_min=0.001), 20, T_max=8, eta_min=0.001)
    sched_case(G, "cosine_nomin", lambda o: S.CosineAnnealingLR(o, T_max=5), 12, T_max=5, eta_min=0.0)

    # Warm-up then cosine: SequentialLR(LinearLR, CosineAnnealingLR) and, as a cross-check, the
    # closed form through LambdaLR.
    W, T, F, EMIN = 4, 10, 0.1, 0.0
    seq = sched_case(G, "warmup_cosine", lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=F, end_factor=1.0, total_iters=W), S.CosineAnnealingLR(o, T_max=T - W, eta_min=EMIN)],
        milestones=[W]), T + 2, warmup_steps=W, total_steps=T, start_factor=F, eta_min=EMIN)

    def lam(e):
        if e < W:
            return F + (1 - F) * e / W
        return 0.5 * (1 + math.cos(math.pi * (e - W) / (T - W)))
    opt = sched_opt()
    ref = S.LambdaLR(opt, lam)
    ref.opt = opt
    ref_lrs = record(ref, T + 2)
    assert torch.allclose(seq, ref_lrs, rtol=1e-12, atol=0), (seq, ref_lrs)

    sched_case(G, "warmup_step", lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=3), S.StepLR(o, step_size=2, gamma=0.5)],
        milestones=[3]), 10, warmup_steps=3, start_factor=0.25, step_size=2, gamma=0.5)
    sched_case(G, "warmup_only", lambda o: S.LinearLR(o, start_factor=0.5, end_factor=1.0, total_iters=4), 7,
               warmup_steps=4, start_factor=0.5)

    for name, anneal, three in [("onecycle_cos", "cos", False), ("onecycle_linear", "linear", False),
                                ("onecycle_three", "cos", True)]:
        sched_case(G, name, lambda o: S.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=20, pct_start=0.3,
                                                   anneal_strategy=anneal, div_factor=10.0, final_div_factor=100.0,
                                                   three_phase=three, cycle_momentum=False), 20,
                   **{"max_lr.0": 0.5, "max_lr.1": 0.2, "total_steps": 20, "pct_start": 0.3,
                      "anneal_cos": anneal == "cos", "div_factor": 10.0, "final_div_factor": 100.0,
                      "three_phase": three})

    # ReduceLROnPlateau with given metric sequences; lr recorded after every step.
    metrics_min = [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.56, 0.57, 0.58, 0.59, 0.6,
                   0.61, 0.62, 0.63]
    metrics_max = [0.1, 0.2, 0.2, 0.25, 0.2, 0.2, 0.3, 0.29, 0.28, 0.31, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2]
    for name, metrics, kw in [
        ("plateau_min_rel", metrics_min, dict(mode="min", factor=0.5, patience=2, threshold=1e-2,
                                              threshold_mode="rel", cooldown=1, min_lr=[0.01, 0.001])),
        ("plateau_max_abs", metrics_max, dict(mode="max", factor=0.1, patience=1, threshold=0.02,
                                              threshold_mode="abs", cooldown=0, min_lr=[0.0, 0.0001])),
        ("plateau_min_abs_cool", metrics_min, dict(mode="min", factor=0.7, patience=0, threshold=0.05,
                                                   threshold_mode="abs", cooldown=2, min_lr=[0.02, 0.0])),
    ]:
        opt = sched_opt()
        s = S.ReduceLROnPlateau(opt, **kw)
        lrs = []
        for m in metrics:
            opt.step()
            s.step(m)
            lrs.append([g["lr"] for g in opt.param_groups])
        G.meta(f"{name}.mode_max", kw["mode"] == "max")
        G.meta(f"{name}.factor", kw["factor"])
        G.meta(f"{name}.patience", kw["patience"])
        G.meta(f"{name}.threshold", kw["threshold"])
        G.meta(f"{name}.threshold_abs", kw["threshold_mode"] == "abs")
        G.meta(f"{name}.cooldown", kw["cooldown"])
        G.meta(f"{name}.min_lr.0", kw["min_lr"][0])
        G.meta(f"{name}.min_lr.1", kw["min_lr"][1])
        G.tensor(f"{name}.metrics", torch.tensor(metrics, dtype=DT))
        G.tensor(f"{name}.lr", torch.tensor(lrs, dtype=DT))
    G.write()


# ---------------- clipping ----------------

def clip():
    G = Golden("clip", "gradient clipping")
    gen = torch.Generator().manual_seed(11)
    g0 = q(torch.randn(3, 4, generator=gen, dtype=DT))
    g1 = q(torch.randn(5, generator=gen, dtype=DT))
    for name, max_norm, norm_type in [("l2", 1.0, 2.0), ("l2_noclip", 100.0, 2.0), ("l1", 2.0, 1.0),
                                      ("inf", 0.5, math.inf), ("l3", 0.75, 3.0), ("l2_zero", 0.0, 2.0)]:
        w = torch.zeros(3, 4, dtype=DT, requires_grad=True)
        b = torch.zeros(5, dtype=DT, requires_grad=True)
        w.grad = g0.clone()
        b.grad = g1.clone()
        total = torch.nn.utils.clip_grad_norm_([w, b], max_norm, norm_type)
        G.meta(f"{name}.max_norm", max_norm)
        G.meta(f"{name}.norm_type", norm_type)
        G.tensor(f"{name}.g0", g0)
        G.tensor(f"{name}.g1", g1)
        G.tensor(f"{name}.total", total.reshape(1))
        G.tensor(f"{name}.out0", w.grad)
        G.tensor(f"{name}.out1", b.grad)
    for name, v in [("value_half", 0.5), ("value_zero", 0.0)]:
        w = torch.zeros(3, 4, dtype=DT, requires_grad=True)
        b = torch.zeros(5, dtype=DT, requires_grad=True)
        w.grad = g0.clone()
        b.grad = g1.clone()
        torch.nn.utils.clip_grad_value_([w, b], v)
        G.meta(f"{name}.clip_value", v)
        G.tensor(f"{name}.g0", g0)
        G.tensor(f"{name}.g1", g1)
        G.tensor(f"{name}.out0", w.grad)
        G.tensor(f"{name}.out1", b.grad)
    G.write()


if __name__ == "__main__":
    torch.set_default_dtype(DT)
    optimizers()
    schedulers()
    clip()
