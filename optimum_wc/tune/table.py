"""What ``optimum-wc tune`` writes beside the chosen model: the candidates' table (JSON and Markdown) and a plot.

The plot shows perplexity against size for every candidate that ran, the
float model and the budget as horizontal lines, the Pareto front (no other
candidate is both smaller and better) as a step line, and the chosen model
circled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

TABLE_JSON = "tune_candidates.json"
TABLE_MD = "tune_candidates.md"
PLOT_PNG = "tune_pareto.png"
_MIB = 2**20


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows no other row beats on both size and perplexity, ascending in size."""
    ok = sorted((r for r in rows if r.get("perplexity") is not None and r.get("size_bytes") is not None
                 and math.isfinite(r["perplexity"])), key=lambda r: (r["size_bytes"], r["perplexity"]))
    front, best = [], math.inf
    for r in ok:
        if r["perplexity"] < best:
            front.append(r)
            best = r["perplexity"]
    return front


def _status(row: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    if row.get("error"):
        return "failed: " + row["error"]
    if row["name"] == summary.get("chosen"):
        return "**chosen**"
    if row["perplexity"] > summary["max_perplexity"]:
        return "over the budget"
    if summary.get("max_size_bytes") and row["size_bytes"] > summary["max_size_bytes"]:
        return "over --max-size"
    return "within the budget"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The candidates in the order they ran, with the float model first."""
    f = summary["float"]
    lines = [
        f"Float model: perplexity {f['perplexity']:.3f} ({f['size_bytes'] / _MIB:.2f} MiB); budget: perplexity <= "
        f"{summary['max_perplexity']:.3f} (+{100 * summary['max_ppl_increase']:g} %)"
        + (f", size <= {summary['max_size_bytes'] / _MIB:.2f} MiB" if summary.get("max_size_bytes") else "")
        + f"; evaluated on {summary['eval_tokens']} tokens of {summary['eval_text']}.",
        "",
        "| # | Candidate | Method | Size (MiB) | Perplexity | vs float (%) | Top-1 vs float (%) | Compress (s) "
        "| Result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(summary["candidates"], 1):
        if r.get("error"):
            lines.append(f"| {i} | {r['layout']} | {r['method']} | - | - | - | - | - | {_status(r, summary)} |")
            continue
        top1 = "-" if r.get("top1_agreement") is None else f"{100 * r['top1_agreement']:.2f}"
        secs = "-" if r.get("compress_seconds") is None else f"{r['compress_seconds']:.1f}"
        cached = " (cached)" if r.get("cached") else ""
        lines.append(
            f"| {i} | {r['layout']} | {r['method']} | {r['size_bytes'] / _MIB:.2f} | {r['perplexity']:.3f} | "
            f"{100 * (r['perplexity'] / f['perplexity'] - 1):+.2f} | {top1} | {secs}{cached} | {_status(r, summary)} |")
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path: Path) -> Path:
    """Perplexity against size, the Pareto front and the chosen point, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["candidates"] if not r.get("error")]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for data_aware, marker, label in ((False, "o", "round to nearest (data-free)"), (True, "s", "data-aware")):
        pts = [r for r in rows if (r["method"] != "rtn") == data_aware]
        if pts:
            ax.scatter([r["size_bytes"] / _MIB for r in pts], [r["perplexity"] for r in pts], marker=marker,
                       alpha=0.7, label=label)
    front = pareto_front(rows)
    if front:
        ax.step([r["size_bytes"] / _MIB for r in front], [r["perplexity"] for r in front], where="post",
                color="tab:green", linewidth=1.2, label="Pareto front")
    ax.axhline(summary["float"]["perplexity"], color="grey", linestyle=":", label="float model")
    ax.axhline(summary["max_perplexity"], color="tab:red", linestyle="--",
               label=f"budget (+{100 * summary['max_ppl_increase']:g} %)")
    if summary.get("max_size_bytes"):
        ax.axvline(summary["max_size_bytes"] / _MIB, color="tab:red", linestyle="-.", label="--max-size")
    chosen = next((r for r in rows if r["name"] == summary.get("chosen")), None)
    if chosen is not None:
        ax.scatter([chosen["size_bytes"] / _MIB], [chosen["perplexity"]], s=220, facecolors="none",
                   edgecolors="black", linewidths=2, label=f"chosen: {chosen['name']}", zorder=5)
    ax.set_xlabel("size of the weights file (MiB)")
    ax.set_ylabel("perplexity (held-out text)")
    ax.set_title("optimum-wc tune: candidates")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def write_outputs(summary: Mapping[str, Any], folder: Path) -> list[Path]:
    """The JSON and Markdown tables and the plot, into ``folder``."""
    folder = Path(folder)
    (folder / TABLE_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    (folder / TABLE_MD).write_text(markdown_table(summary))
    return [folder / TABLE_JSON, folder / TABLE_MD, plot(summary, folder / PLOT_PNG)]
