"""Evaluation output: results.json (the table), details.json, results.md and results.png.

results.json is exactly ``{pipeline: {"Recall@5": x, "Recall@10": x, "nDCG@10": x, "MRR@10": x}}``
(fractions, averaged over datasets); everything else (per dataset / language rows, stage times,
sizes, settings) goes to details.json and the Markdown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rankserve.eval.metrics import METRICS
from rankserve.eval.pipeline import LIFT_METRICS, PIPELINES, DatasetResult, macro_average

STAGES = ("sparse", "embed corpus", "embed queries", "dense search", "fusion", "rerank", "metrics")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def rows(results: list[DatasetResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Row label -> pipeline -> metrics: one row per dataset, plus dataset/lang rows for mixed-language ones."""
    out = {}
    for r in results:
        out[r.name] = r.metrics
        for lang, m in r.per_lang.items():
            out[f"{r.name}/{lang}"] = m
    return out


def markdown(results: list[DatasetResult], settings: dict[str, Any]) -> str:
    avg = macro_average(results)
    weight = settings.get("rerank_weight")
    fusion = "" if weight is None else f" (+Rerank fused with its first stage: weighted RRF, reranker weight {weight})"
    lines = [
        f"Embedder: `{settings['embedder']}`  ",
        f"Reranker: `{settings['reranker']}`{fusion}  ",
        f"Top-k: {settings['top_k']}; datasets: {', '.join(r.name for r in results)}; values in %"
        + ("; averaged over datasets" if len(results) > 1 else ""),
        "",
    ]
    lines += _table(["Pipeline", *METRICS], [[p, *(pct(avg[p][m]) for m in METRICS)] for p in PIPELINES])
    labelled = rows(results)
    if len(labelled) > 1:
        labels = list(labelled)
        for metric in ("Recall@5", "nDCG@10"):
            lines += ["", f"{metric} per dataset / language:", ""]
            body = [[p, *(pct(labelled[label][p][metric]) for label in labels), pct(avg[p][metric])] for p in PIPELINES]
            lines += _table(["Pipeline", *labels, "avg"], body)
    lines += [
        "",
        "What reranking changes (mean difference in points; p: paired randomization test, 10,000 rounds):",
        "",
    ]
    lines += _table(
        ["Dataset", "Comparison", *(f"{m} (p)" for m in LIFT_METRICS)],
        [
            [r.name, comparison, *(f"{100 * v[m]['delta']:+.1f} ({v[m]['p']:.3g})" for m in LIFT_METRICS)]
            for r in results
            for comparison, v in r.lift.items()
        ],
    )
    lines += ["", "Seconds per stage (embeddings read from the cache are marked *):", ""]
    body = []
    for stage in STAGES:
        cells = []
        for r in results:
            mark = "*" if r.cached.get(stage) else ""
            cells.append(f"{r.timings.get(stage, 0.0):.1f}{mark}")
        body.append([stage, *cells])
    body.append(["total", *(f"{sum(r.timings.values()):.1f}" for r in results)])
    lines += _table(["Stage", *(r.name for r in results)], body)
    lines += ["", "Sizes:", ""]
    lines += _table(
        ["Dataset", "documents", "pages", "queries"],
        [[r.name, str(r.sizes["documents"]), str(r.sizes["pages"]), str(r.sizes["queries"])] for r in results],
    )
    return "\n".join(lines) + "\n"


def chart(results: list[DatasetResult], path: Path, metric: str = "Recall@5") -> None:
    """Grouped bars: one group per dataset (and the average), one bar per pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = rows(results)
    groups = list(labelled) + (["avg"] if len(labelled) > 1 else [])
    avg = macro_average(results)
    values = {g: (avg if g == "avg" else labelled[g]) for g in groups}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 3.6), dpi=100)
    width = 0.8 / len(PIPELINES)
    for i, p in enumerate(PIPELINES):
        xs = [g + (i - (len(PIPELINES) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [100 * values[g][p][metric] for g in groups], width, label=p)
        ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncols=len(PIPELINES), loc="upper center", bbox_to_anchor=(0.5, 1.16), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out: Path, results: list[DatasetResult], settings: dict[str, Any]) -> str:
    """Write every output file; returns the Markdown (the caller prints it)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(macro_average(results), indent=2) + "\n")
    details = {
        "settings": settings,
        "average": macro_average(results),
        "rows": rows(results),
        "datasets": {
            r.name: {
                "sizes": r.sizes,
                "metrics": r.metrics,
                "per_lang": r.per_lang,
                "seconds": r.timings,
                "cached": r.cached,
                "rerank_lift": r.lift,
            }
            for r in results
        },
    }
    (out / "details.json").write_text(json.dumps(details, indent=2, ensure_ascii=False) + "\n")
    text = markdown(results, settings)
    (out / "results.md").write_text("# rankserve eval\n\n" + text)
    chart(results, out / "results.png")
    return text
