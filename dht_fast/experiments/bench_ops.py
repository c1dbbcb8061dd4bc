"""The comparison run: our teaching-objective backends against named baselines, in one process.

Groups (``B`` samples, ``D`` features, ``C`` classes, float32):

* ``linear_grad_x``: objective + ``grad_x`` of a softmax learner. Ours: every runnable backend
  of :func:`dht_fast.linear_teaching_objective` but ``func``. Baselines: ``torch.func`` (the
  ``func`` backend, the reference), ``autograd loop`` (per sample: ``autograd.grad`` of the loss
  w.r.t. ``W, b`` with ``create_graph``, the objective, ``autograd.grad`` w.r.t. ``x``) and
  ``GEMM`` (one ``x @ weight.T``, the speed-of-light reference).
* ``linear_norms``: ``||g_i||^2`` (``grad_x=False``) vs ``torch.func``, Opacus
  (``GradSampleModule``, grad samples then norms) and BackPACK (``BatchL2Grad``) on an
  ``nn.Linear``.
* ``mlp_norms``, ``mlp_inner``, ``mlp_grad_x``: MLP 784-256-256-10 (ReLU). ``ghost`` is
  :func:`dht_fast.teaching_objective` with ``backend="ghost"`` (one call gives ``||g_i||^2`` and
  ``<w - w*, g_i>``), ``ghost norms`` is :func:`dht_fast.per_sample_grad_norm_sq` (norms only),
  ``forward-mode jvp`` is :func:`dht_fast.directional_inner`; baselines
  ``torch.func``, Opacus and BackPACK as above. Peak memory of every MLP method is measured.

Every method is checked against the reference once per shape before it is timed. Slow
baselines are timed on the first rows of the batch and scaled linearly to ``B``
(``rows_timed`` in the results). Ratios are ``baseline time / our time`` (speedups) and
``our memory / baseline memory``.
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dht_fast.experiments import bench_harness as H
from dht_fast.ops.linear_objective import DISPATCH, linear_teaching_objective
from dht_fast.ops.model_objective import (
    directional_inner,
    per_sample_grad_norm_sq,
    teaching_objective,
)

log = logging.getLogger(__name__)

LR = 0.1
SEED = 0
MLP_WIDTHS = (784, 256, 256, 10)
LOOP_ROWS = 64    # the per-sample loop at B > 256 is timed on this many samples
FUNC_MLP_ROWS = 512   # the MLP torch.func reference is timed (and checked) on this many
FULL = {"batches": (256, 4096), "linear_shapes": ((784, 10), (512, 100), (3072, 10))}
QUICK = {"batches": (256,), "linear_shapes": ((784, 10),)}


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    outputs: tuple[str, ...]   # compared against the reference: sq, inner, obj, gx
    ours: tuple[str, ...]
    baselines: tuple[str, ...]
    grad_x: bool
    memory: bool


def _our_linear_backends() -> tuple[str, ...]:
    return tuple(n for n in DISPATCH.names if n != "func")


def groups() -> list[Group]:
    lin = _our_linear_backends()
    return [
        Group("linear_grad_x", "Linear learner: objective + grad_x",
              ("sq", "inner", "obj", "gx"), lin, ("torch.func", "autograd loop", "GEMM"),
              True, False),
        Group("linear_norms", "Linear learner: per-sample ||g_i||^2",
              ("sq",), lin, ("torch.func", "Opacus", "BackPACK"), False, False),
        Group("mlp_norms", "MLP 784-256-256-10: per-sample ||g_i||^2",
              ("sq",), ("ghost norms", "ghost"), ("torch.func", "Opacus", "BackPACK"), False,
              True),
        Group("mlp_inner", "MLP 784-256-256-10: <w - w*, g_i>",
              ("inner",), ("ghost", "forward-mode jvp"), ("torch.func",), False, True),
        Group("mlp_grad_x", "MLP 784-256-256-10: objective + grad_x",
              ("sq", "inner", "obj", "gx"), ("ghost",), ("torch.func",), True, True),
    ]


# ---- inputs ---------------------------------------------------------------------------------

def _mlp() -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(MLP_WIDTHS) - 2 else [])
    return nn.Sequential(*layers)


def make_inputs(group: str, shape: dict, device: torch.device, seed: int = SEED) -> dict:
    """Random inputs of one case; ``shape`` is ``{"B", "D", "C"}`` (linear) or ``{"B"}`` (MLP)."""
    torch.manual_seed(seed)
    b = shape["B"]
    if group.startswith("linear"):
        d, c = shape["D"], shape["C"]
        w = torch.randn(c, d) / d**0.5
        model = nn.Linear(d, c)
    else:
        d, c = MLP_WIDTHS[0], MLP_WIDTHS[-1]
        model = _mlp()
    model = model.to(device)
    star = {k: (p + 0.05 * torch.randn_like(p)).detach() for k, p in model.named_parameters()}
    if group.startswith("linear"):
        with torch.no_grad():
            model.weight.copy_(w.to(device))
    x = torch.randn(b, d, device=device)
    y = torch.randint(0, c, (b,), device=device)
    return {"model": model, "star": star, "x": x, "y": y}


# ---- methods: factory(inputs, grad_x) -> method(rows) -> {output: tensor} ------------------

def _backend(name):
    def factory(inp, grad_x):
        m, s, x, y = inp["model"], inp["star"], inp["x"], inp["y"]
        w, b = m.weight.detach(), m.bias.detach()

        def method(rows):
            out = linear_teaching_objective(x[:rows], y[:rows], w, b, s["weight"], s["bias"],
                                            LR, grad_x=grad_x, backend=name)
            return {"sq": out.grad_norm_sq, "inner": out.inner, "obj": out.objective,
                    "gx": out.grad_x}
        return method
    return factory


def _autograd_loop(inp, grad_x):
    m, s, x, y = inp["model"], inp["star"], inp["x"], inp["y"]
    w, b = m.weight.detach().requires_grad_(), m.bias.detach().requires_grad_()
    vw, vb = w.detach() - s["weight"], b.detach() - s["bias"]

    def method(rows):
        sq, inner, obj, gx = [], [], [], []
        for i in range(rows):
            xi = x[i:i + 1].detach().requires_grad_()
            loss = F.cross_entropy(F.linear(xi, w, b), y[i:i + 1])
            gw, gb = torch.autograd.grad(loss, (w, b), create_graph=True)
            sq_i = (gw * gw).sum() + (gb * gb).sum()
            inner_i = (vw * gw).sum() + (vb * gb).sum()
            obj_i = LR * LR * sq_i - 2.0 * LR * inner_i
            gx.append(torch.autograd.grad(obj_i, xi)[0])
            sq.append(sq_i.detach()), inner.append(inner_i.detach()), obj.append(obj_i.detach())
        return {"sq": torch.stack(sq), "inner": torch.stack(inner), "obj": torch.stack(obj),
                "gx": torch.cat(gx)}
    return method


def _gemm(inp, grad_x):
    x, w = inp["x"], inp["model"].weight.detach()

    return lambda rows: x[:rows] @ w.T


def _opacus(inp, grad_x):
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(inp["model"]), loss_reduction="sum")
    x, y = inp["x"], inp["y"]

    def method(rows):
        gsm.zero_grad(set_to_none=True)
        F.cross_entropy(gsm(x[:rows]), y[:rows], reduction="sum").backward()
        return {"sq": sum(p.grad_sample.flatten(1).pow(2).sum(1) for p in gsm.parameters())}
    return method


def _backpack(inp, grad_x):
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    model = extend(copy.deepcopy(inp["model"]))
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    x, y = inp["x"], inp["y"]

    def method(rows):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[:rows]), y[:rows])
        with backpack(BatchL2Grad()):
            loss.backward()
        return {"sq": sum(p.batch_l2 for p in model.parameters())}
    return method


def _model_objective(backend):
    def factory(inp, grad_x):
        m, s, x, y = inp["model"], inp["star"], inp["x"], inp["y"]

        def method(rows):
            out = teaching_objective(m, x[:rows], y[:rows], s, LR, grad_x=grad_x,
                                     backend=backend)
            return {"sq": out.grad_norm_sq, "inner": out.inner, "obj": out.objective,
                    "gx": out.grad_x}
        return method
    return factory


def _ghost_norms(inp, grad_x):
    m, x, y = inp["model"], inp["x"], inp["y"]
    return lambda rows: {"sq": per_sample_grad_norm_sq(m, x[:rows], y[:rows], backend="ghost")}


def _jvp(inp, grad_x):
    m, s, x, y = inp["model"], inp["star"], inp["x"], inp["y"]
    return lambda rows: {"inner": directional_inner(m, x[:rows], y[:rows], s)}


LINEAR_METHODS = {"torch.func": _backend("func"), "autograd loop": _autograd_loop,
                  "GEMM": _gemm, "Opacus": _opacus, "BackPACK": _backpack,
                  **{n: _backend(n) for n in _our_linear_backends()}}
MLP_METHODS = {"ghost": _model_objective("ghost"), "ghost norms": _ghost_norms,
               "torch.func": _model_objective("func"),
               "forward-mode jvp": _jvp, "Opacus": _opacus, "BackPACK": _backpack}


def _factory(group: Group, method: str):
    return (LINEAR_METHODS if group.name.startswith("linear") else MLP_METHODS)[method]


def _quiet_hooks() -> None:
    # Opacus and BackPACK hooks warn that inputs need no gradient: true, and harmless here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")


def build_method(group_name: str, method: str, shape: dict, device: str, seed: int = SEED):
    """``method(rows)`` on freshly made inputs (module level: the memory probe pickles it)."""
    _quiet_hooks()
    group = next(g for g in groups() if g.name == group_name)
    inp = make_inputs(group_name, shape, torch.device(device), seed)
    return _factory(group, method)(inp, group.grad_x)


def why_not(group: Group, method: str, inp: dict):
    """Why ``method`` cannot run on these inputs, or None."""
    if group.name.startswith("linear") and method in DISPATCH.names:
        return DISPATCH.why_not(method, x=inp["x"], weight=inp["model"].weight)
    if method in ("Opacus", "BackPACK"):
        try:
            __import__("opacus" if method == "Opacus" else "backpack")
        except ImportError as err:
            return f"{method} is not installed ({err})"
    return None


def rows_timed(group: Group, method: str, b: int) -> int:
    if method == "autograd loop" and b > 256:
        return LOOP_ROWS
    if method == "torch.func" and group.name.startswith("mlp"):
        return min(b, FUNC_MLP_ROWS)
    return b


# ---- one case -------------------------------------------------------------------------------

def _check(group, method, shape, got, ref):
    """Assert that ``method`` agrees with the reference on the rows both computed."""
    for key in group.outputs:
        g, r = got[key], ref[key][: got[key].shape[0]]
        atol = 2e-3 * r.abs().max().item() + 1e-6
        torch.testing.assert_close(
            g, r, rtol=2e-3, atol=atol,
            msg=lambda m: f"{group.name} {shape}: {method} {key} disagrees with torch.func: {m}")


def run_case(group: Group, shape: dict, device: torch.device, repeats: int) -> dict:
    """Check, time (and on MLPs measure memory of) every method of ``group`` at ``shape``."""
    inp = make_inputs(group.name, shape, device)
    b = shape["B"]
    check_rows = b if group.name.startswith("linear") else min(b, FUNC_MLP_ROWS)
    ref = _factory(group, "torch.func")(inp, group.grad_x)(check_rows)
    case = {"group": group.name, "shape": shape, "dtype": "float32", "methods": {},
            "skipped": {}}
    for name in group.ours + group.baselines:
        reason = why_not(group, name, inp)
        if reason is not None:
            case["skipped"][name] = reason
            log.info("%s %s: skipping %s: %s", group.name, shape, name, reason)
            continue
        method = _factory(group, name)(inp, group.grad_x)
        rows = rows_timed(group, name, b)
        got = method(min(rows, check_rows))
        if name != "GEMM":
            _check(group, name, shape, got, ref)
        stats = H.time_call(lambda: method(rows), device, repeats)
        scale = b / rows
        for k in ("median_s", "p20_s", "p80_s"):
            stats[k] *= scale
        stats.update(role="ours" if name in group.ours else "baseline", rows_timed=rows)
        if group.memory:
            stats["peak_mem_mib"] = H.peak_memory_mib(
                build_method, (group.name, name, shape, device.type), rows, device)
        case["methods"][name] = stats
        log.info("%s %s %s: median %.3g s (p20 %.3g, p80 %.3g)%s", group.name, shape, name,
                 stats["median_s"], stats["p20_s"], stats["p80_s"],
                 f", timed on {rows} rows" if rows < b else "")
    _ratios(case)
    return case


def _ratios(case: dict) -> None:
    meth = case["methods"]
    ours = [n for n, m in meth.items() if m["role"] == "ours"]
    base = [n for n, m in meth.items() if m["role"] == "baseline"]
    case["speedup"] = {o: {b: meth[b]["median_s"] / meth[o]["median_s"] for b in base}
                       for o in ours}
    # Memory is compared only between methods that ran on the same rows.
    case["mem_ratio"] = {
        o: {b: meth[o]["peak_mem_mib"] / max(meth[b]["peak_mem_mib"], 1e-3) for b in base
            if "peak_mem_mib" in meth[o] and meth[b]["rows_timed"] == meth[o]["rows_timed"]}
        for o in ours}


# ---- the run --------------------------------------------------------------------------------

def _target(name, value, threshold, met):
    return {"name": name, "value": value, "threshold": threshold, "met": bool(met)}


def targets(cases: list[dict]) -> list[dict]:
    """The issue's targets, evaluated on the cases that this run measured."""
    out = []
    for case in cases:
        meth, shape = case["methods"], case["shape"]
        if case["group"] == "linear_grad_x" and (shape["D"], shape["C"]) == (784, 10) \
                and shape["B"] == 4096:
            best = min((n for n, m in meth.items() if m["role"] == "ours"),
                       key=lambda n: meth[n]["median_s"])
            s = case["speedup"][best]
            out.append(_target(f"linear B=4096 D=784 C=10 grad_x: {best} speedup vs torch.func",
                               s["torch.func"], ">= 100", s["torch.func"] >= 100))
            out.append(_target(f"linear B=4096 D=784 C=10 grad_x: {best} time / GEMM",
                               1 / s["GEMM"], "<= 2.5", 1 / s["GEMM"] <= 2.5))
        if case["group"] == "mlp_norms":
            for b in ("Opacus", "BackPACK"):
                if b not in meth:
                    continue
                s = case["speedup"]["ghost norms"][b]
                out.append(_target(f"MLP norms B={shape['B']}: ghost norms speedup vs {b}", s,
                                   ">= 2", s >= 2))
                m = case["mem_ratio"]["ghost norms"].get(b)
                if m is not None:
                    out.append(_target(f"MLP norms B={shape['B']}: ghost norms memory / {b}", m,
                                       "<= 1", m <= 1))
    return out


def run_comparison(out_dir: Path, quick: bool = False, repeats: int = 10,
                   device: str = "auto") -> Path:
    """Run every group at every shape, store the JSON under ``out_dir``, return its path."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    plan = QUICK if quick else FULL
    _quiet_hooks()
    cases = []
    for group in groups():
        for b in plan["batches"]:
            shapes = ([{"B": b, "D": d, "C": c} for d, c in plan["linear_shapes"]]
                      if group.name.startswith("linear") else [{"B": b}])
            cases += [run_case(group, shape, dev, repeats) for shape in shapes]
    env = H.environment(dev)
    result = {"environment": env, "quick": quick, "repeats": repeats, "lr": LR,
              "mlp_widths": list(MLP_WIDTHS),
              "groups": {g.name: {"title": g.title, "ours": list(g.ours),
                                  "baselines": list(g.baselines)} for g in groups()},
              "cases": cases, "targets": targets(cases)}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = H.result_path(out_dir, env["device"])
    path.write_text(json.dumps(result, indent=1))
    log.info("wrote %s", path)
    return path
