"""The trust part of the run report: what evaluation gold says of each model, and what the gates did.

Reads the `trust` blocks of rounds/N/summary.json and stage2/summary.json and turns them into
plain lines an operator reads at a glance: evaluation-gold accuracy with its CI and n, each
judge's reliability and vote weight, labels changed / dropped / abstained with the expected
precision of the flips, the noise-rate estimate, and a warning line whenever the run abstained.
"""

from __future__ import annotations

from typing import Any


def estimate_text(est: dict[str, Any] | None) -> str:
    """'0.512 [0.445, 0.579], n=120', or 'n/a (n=0)': a stored Estimate as it prints."""
    from pipeline.trust import Estimate

    return str(Estimate.from_dict(est or {}))


def _judges(judges: dict[str, Any]) -> str:
    return "; ".join(
        f"{name} {estimate_text(j['accuracy'])}, coverage {j['coverage']:.2f}, weight {j['weight']:.2f}"
        for name, j in sorted(judges.items())) or "none"


def round_cells(summary: dict[str, Any]) -> dict[str, Any]:
    """The trust columns of one round's row in the round table."""
    trust = summary.get("trust") or {}
    silver = trust.get("silver") or {}
    precision = (silver.get("expected_flip_precision") or {}).get("value")
    return {
        "gold_eval": estimate_text((summary.get("gold_eval") or {}).get("accuracy")),
        "voting_judges": len((summary.get("judges") or {}).get("voting_judges") or []),
        "changed": silver.get("changed"),
        "abstained": silver.get("abstained"),
        "flip_precision": precision,
    }


def stage2_cells(stage2: dict[str, Any]) -> dict[str, Any]:
    trust = stage2.get("trust") or {}
    labels = trust.get("labels") or {}
    precision = (trust.get("expected_flip_precision") or {}).get("value")
    best = (trust.get("evidence") or {}).get("best", {}).get("accuracy")
    return {
        "gold_eval": estimate_text(best),
        "voting_judges": len((stage2.get("judges") or {}).get("voting_judges") or []),
        "changed": labels.get("changed"),
        "abstained": labels.get("abstained"),
        "flip_precision": precision,
    }


def trust_lines(rounds: list[dict[str, Any]], stage2: dict[str, Any] | None) -> list[str]:
    """Plain lines for the CLI and the report; warnings start with 'WARNING:'."""
    lines: list[str] = []
    for summary in sorted(rounds, key=lambda s: s["round"]):
        trust = summary.get("trust")
        if not trust:
            continue
        r = summary["round"]
        lines.append(f"round {r}: RM gold-eval accuracy {estimate_text(summary['gold_eval']['accuracy'])}")
        lines.append(f"round {r}: judges on gold-eval: {_judges(trust['judges'])}; weighted vote "
                     f"{estimate_text(trust['ensemble']['accuracy'])}")
        silver = trust["silver"]
        lines.append(f"round {r}: silver labels changed {silver['changed']}, agreed {silver['agreed']}, "
                     f"abstained {silver['abstained']}; expected flip precision "
                     f"{estimate_text(silver.get('expected_flip_precision'))}")
        lines += [f"WARNING: round {r}: {w}" for w in trust.get("warnings", [])]
    if stage2 and stage2.get("trust"):
        trust = stage2["trust"]
        evidence = "; ".join(f"{e['name']} {estimate_text(e['accuracy'])}"
                             + ("" if e["reliable"] else " (not reliable)")
                             for e in trust["evidence"].values())
        lines.append(f"stage 2: evidence on gold-eval: {evidence}")
        labels = trust["labels"]
        lines.append(f"stage 2: of {labels['candidates']} candidates, changed {labels['changed']}, dropped "
                     f"{labels['dropped']}, abstained {labels['abstained']}, kept {labels['kept']}; "
                     f"expected flip precision {estimate_text(trust.get('expected_flip_precision'))}")
        noise = trust.get("noise") or {}
        if noise.get("reliable"):
            per_source = "; ".join(f"{s} {estimate_text(e)}" for s, e in sorted(noise["by_source"].items()))
            lines.append(f"stage 2: estimated label-noise rate ({noise['from']}): {per_source}")
        lines += [f"WARNING: stage 2: {w}" for w in trust.get("warnings", [])]
    return lines
