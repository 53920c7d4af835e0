"""The run report: what each round of the loop did, as a table, JSON and plots.

Reads the per-round summaries the loop writes (rounds/N/summary.json) and stage 2's summary,
and writes `report/` in the workspace: report.json (machines), report.md (the round table),
gold_accuracy.png and pool_composition.png (matplotlib), and report.html (table + both plots
embedded, one self-contained file to open in a browser).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

from pipeline.report_trust import round_cells, stage2_cells, trust_lines
from pipeline.store import Workspace

REPORT_DIR = "report"
COMPOSITION = ("gold", "silver", "kept", "flipped", "unlabeled", "dropped")
TABLE_COLUMNS = (
    ("round", "round"),
    ("gold", "gold"),
    ("silver", "silver"),
    ("kept", "kept"),
    ("flipped", "flipped"),
    ("unlabeled", "unlabeled"),
    ("dropped", "dropped"),
    ("retrieved", "retrieved"),
    ("judged", "judged"),
    ("judge agreement", "judge_agreement"),
    ("voting judges", "voting_judges"),
    ("gold-eval accuracy [95% CI], n", "gold_eval"),
    ("labels changed", "changed"),
    ("abstained", "abstained"),
    ("expected flip precision", "flip_precision"),
)


@dataclass(frozen=True)
class ReportPaths:
    json: str
    markdown: str
    html: str
    gold_accuracy_png: str
    composition_png: str


def round_rows(rounds: list[dict[str, Any]], stage2: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One flat row per round (and one for stage 2) with the table's columns."""
    rows = []
    for summary in sorted(rounds, key=lambda s: s["round"]):
        counts = summary.get("counts", {})
        rows.append({
            "round": str(summary["round"]),
            **{k: counts.get(k, 0) for k in COMPOSITION},
            "retrieved": summary.get("retrieval", {}).get("retrieved", 0),
            "judged": summary.get("judges", {}).get("judged", 0),
            "judge_agreement": summary.get("judges", {}).get("agreement"),
            "gold_accuracy": summary.get("gold_accuracy"),
            **round_cells(summary),
        })
    if stage2:
        counts = stage2.get("counts", {})
        rows.append({
            "round": "stage 2",
            **{k: counts.get(k, 0) for k in COMPOSITION},
            "retrieved": stage2.get("retrieval", {}).get("retrieved", 0),
            "judged": stage2.get("judges", {}).get("judged", 0),
            "judge_agreement": stage2.get("judges", {}).get("agreement"),
            "gold_accuracy": None,
            **stage2_cells(stage2),
        })
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def round_table_markdown(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for title, _ in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r.get(key)) for _, key in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_gold_accuracy(rounds: list[dict[str, Any]]) -> bytes:
    """Gold accuracy of each round's selected RM, overall and per task category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rounds, key=lambda s: s["round"])
    xs = [s["round"] for s in ordered]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(xs, [s.get("gold_accuracy") or float("nan") for s in ordered], "o-", lw=2.5,
            color="black", label="overall")
    categories = sorted({c for s in ordered for c in s.get("gold_accuracy_per_category", {})})
    for category in categories[:10]:
        ys = [s.get("gold_accuracy_per_category", {}).get(category, float("nan")) for s in ordered]
        ax.plot(xs, ys, ".--", lw=1, alpha=0.7, label=category)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("stage-1 round")
    ax.set_ylabel("accuracy on gold")
    ax.set_xticks(xs)
    ax.set_ylim(0, 1)
    ax.set_title("Gold accuracy of the selected reward model")
    ax.legend(fontsize=7, loc="lower right", ncols=2)
    data = _png(fig)
    plt.close(fig)
    return data


def plot_pool_composition(rows: list[dict[str, Any]]) -> bytes:
    """Stacked bars: gold / silver / stage-2 kept and flipped / unlabeled / dropped pairs per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["round"] for r in rows]
    colors = {"gold": "#d4a017", "silver": "#9aa5b1", "kept": "#5cb85c", "flipped": "#a07cc5",
              "unlabeled": "#cfe3f5", "dropped": "#d9534f"}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    bottom = [0] * len(rows)
    for part in COMPOSITION:
        values = [r.get(part, 0) or 0 for r in rows]
        ax.bar(labels, values, bottom=bottom, color=colors[part], label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("round")
    ax.set_ylabel("pairs")
    ax.set_title("Pool composition")
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def _html(rows: list[dict[str, Any]], pngs: dict[str, bytes], extra: dict[str, Any], trust: list[str]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t, _ in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>" for _, k in TABLE_COLUMNS) + "</tr>"
        for r in rows
    )
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"></figure>'
        for name, data in pngs.items()
    )
    facts = "".join(
        f"<li>{html.escape(str(k))}: {html.escape(_cell(v))}</li>" for k, v in extra.items()
    )
    warn = ' style="color:#b00"'
    notes = "".join(f"<li{warn if line.startswith('WARNING') else ''}>{html.escape(line)}</li>"
                    for line in trust)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>synpref run report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:1em}</style></head><body>"
        f"<h1>synpref run report</h1><ul>{facts}</ul><h2>Trust (evaluation gold)</h2><ul>{notes}</ul>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{images}</body></html>"
    )


def write_report(
    ws: Workspace,
    rounds: list[dict[str, Any]],
    stage2: dict[str, Any] | None = None,
    *,
    export: dict[str, Any] | None = None,
) -> ReportPaths:
    """Write report.{json,md,html} and the two PNGs under `report/` in the workspace."""
    rows = round_rows(rounds, stage2)
    table = round_table_markdown(rows)
    pngs = {
        "gold_accuracy.png": plot_gold_accuracy(rounds),
        "pool_composition.png": plot_pool_composition(rows),
    }
    extra = {k: v for k, v in (export or {}).items() if not isinstance(v, dict | list)}
    trust = trust_lines(rounds, stage2)
    trust_md = "\n".join(f"- {line}" for line in trust)
    ws.write_json(f"{REPORT_DIR}/report.json",
                  {"rounds": rounds, "stage2": stage2, "export": export, "table": rows, "trust": trust})
    ws.write_bytes(f"{REPORT_DIR}/report.md",
                   f"# synpref run report\n\n{table}\n\n## Trust (evaluation gold)\n\n{trust_md}\n\n"
                   f"![gold accuracy](gold_accuracy.png)\n\n"
                   f"![pool composition](pool_composition.png)\n".encode())
    for name, data in pngs.items():
        ws.write_bytes(f"{REPORT_DIR}/{name}", data)
    ws.write_bytes(f"{REPORT_DIR}/report.html", _html(rows, pngs, extra, trust).encode())
    return ReportPaths(
        json=ws.path(REPORT_DIR, "report.json"),
        markdown=ws.path(REPORT_DIR, "report.md"),
        html=ws.path(REPORT_DIR, "report.html"),
        gold_accuracy_png=ws.path(REPORT_DIR, "gold_accuracy.png"),
        composition_png=ws.path(REPORT_DIR, "pool_composition.png"),
    )
