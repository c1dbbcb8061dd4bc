"""Markdown tables and a ratio plot generated from a stored comparison result (the JSON that
:func:`dht_fast.experiments.bench_ops.run_comparison` writes)."""
from __future__ import annotations

import json
from pathlib import Path

ENV_KEYS = ("device", "threads", "torch", "triton", "python", "opacus", "backpack", "dht_fast",
            "platform", "date", "command")


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _shape(case: dict) -> list[str]:
    s = case["shape"]
    return [str(s["B"])] + ([str(s["D"]), str(s["C"])] if "D" in s else [])


def _label(case: dict) -> str:
    s = case["shape"]
    return f"B={s['B']}" + (f"\n{s['D']}x{s['C']}" if "D" in s else "")


def fastest_ours(case: dict):
    ours = [n for n, m in case["methods"].items() if m["role"] == "ours"]
    return min(ours, key=lambda n: case["methods"][n]["median_s"]) if ours else None


def _group_table(result: dict, name: str, cases: list[dict]) -> list[str]:
    info = result["groups"][name]
    baselines = [b for b in info["baselines"] if any(b in c["methods"] for c in cases)]
    memory = any("peak_mem_mib" in m for c in cases for m in c["methods"].values())
    mem_bases = [b for b in baselines if any(c["mem_ratio"].get(o, {}).get(b) is not None
                                             for c in cases for o in c["mem_ratio"])]
    dims = ["B", "D", "C"] if "D" in cases[0]["shape"] else ["B"]
    head = dims + ["method", "median ms", "p20–p80 ms"] + (["peak MiB"] if memory else [])
    head += [("÷ GEMM" if b == "GEMM" else f"× vs {b}") for b in baselines]
    head += [f"mem ÷ {b}" for b in mem_bases]
    lines = [f"### {info['title']}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    notes = set()
    for case in cases:
        for method, m in case["methods"].items():
            star = ""
            if m["rows_timed"] < case["shape"]["B"]:
                star = "†"
                notes.add(m["rows_timed"])
            row = _shape(case) + [f"**{method}**" if m["role"] == "ours" else method,
                                  _ms(m["median_s"]) + star,
                                  f"{_ms(m['p20_s'])}–{_ms(m['p80_s'])}"]
            if memory:
                mem = m.get("peak_mem_mib")
                row.append("" if mem is None else f"{mem:.0f}" + star)
            speed = case["speedup"].get(method, {})
            for b in baselines:
                v = speed.get(b)
                row.append("" if v is None else f"{1 / v:.3g}" if b == "GEMM" else f"{v:.3g}")
            ratio = case["mem_ratio"].get(method, {})
            row += ["" if ratio.get(b) is None else f"{ratio[b]:.3g}" for b in mem_bases]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for rows in sorted(notes):
        lines.append(f"† timed on the first {rows} samples and scaled linearly to B"
                     + (" (peak memory on those samples)" if memory else "") + ".")
    skipped = {k: v for c in cases for k, v in c["skipped"].items()}
    for method, reason in skipped.items():
        lines.append(f"Not run: `{method}`: {reason}.")
    return lines + [""]


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# dht_fast benchmark: teaching-objective ops vs baselines", ""]
    lines += [f"- {k}: `{env[k]}`" for k in ENV_KEYS if env.get(k) is not None]
    lines += [f"- repeats: {result['repeats']} timed after warm-up"
              + (" (quick run: reduced shapes)" if result["quick"] else ""), ""]
    lines += ["Bold rows are ours. `× vs X`: X's median time / ours (higher is better). "
              "`÷ GEMM`: ours / one `x @ weight.T` (lower is better). `mem ÷ X`: our peak "
              "memory / X's (lower is better).", ""]
    if result["targets"]:
        lines += ["## Targets", "", "| target | measured | wanted | met |", "|---|---|---|---|"]
        lines += [f"| {t['name']} | {t['value']:.3g} | {t['threshold']} | "
                  f"{'yes' if t['met'] else '**no**'} |" for t in result["targets"]]
        lines.append("")
    lines += ["## Results", ""]
    for name in result["groups"]:
        cases = [c for c in result["cases"] if c["group"] == name]
        if cases:
            lines += _group_table(result, name, cases)
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Bars of the fastest of our methods' speedup over each baseline, per case, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [n for n in result["groups"] if any(c["group"] == n for c in result["cases"])]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        cases = [c for c in result["cases"] if c["group"] == name]
        baselines = [b for b in result["groups"][name]["baselines"]
                     if any(b in c["methods"] for c in cases)]
        width = 0.8 / max(len(baselines), 1)
        for j, b in enumerate(baselines):
            xs = [i + (j - (len(baselines) - 1) / 2) * width for i in range(len(cases))]
            vals = [c["speedup"].get(fastest_ours(c), {}).get(b, float("nan")) for c in cases]
            ax.bar(xs, vals, width, label=f"vs {b}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{_label(c)}\n({fastest_ours(c)})" for c in cases], fontsize=8)
        ax.set_ylabel("speedup (x)")
        ax.set_title(result["groups"][name]["title"], fontsize=10)
        ax.legend(fontsize=8)
    env = result["environment"]
    fig.suptitle(f"Fastest of ours vs baselines: {env['device']}, {env['threads']} threads, "
                 f"torch {env['torch']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(json_path: Path) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.png`` beside ``json_path``; return their paths."""
    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    md, png = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md.write_text(markdown(result) + "\n")
    plot(result, png)
    return md, png
