"""`synpref bench quality` and `synpref bench world`: the curation-quality meter.

`quality` injects known label noise into a copy of a workspace's pool, runs the configured
loop on it and prints, per stage and filter, how well the flipped pairs were flagged.
`world` runs the same loop on the known-truth synthetic world for several seeds and adds
reward-model accuracy on the world's clean held-out set. Both write JSON and a PNG.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.bench.machine import machine_info
from flows.cli.common import ConfigOpt, console, friendly_errors, load_config, table

FILTER_COLUMNS = ["filter", "pairs", "flagged", "precision", "recall", "f1", "clean discarded"]


def detection_rows(filters: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """Table rows from one run's per-filter detection figures."""
    return [[name, d["pairs"], d["flagged"], d["precision"], d["recall"], d["f1"],
             d["clean_discard_rate"]] for name, d in filters.items()]


def interval_text(i: dict[str, Any]) -> str:
    return f"{i['mean']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"


def plot_quality(report: dict[str, Any], path: Path, title: str) -> None:
    """Bars of precision / recall / F1 per filter; with held-out accuracy when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heldout = report.get("heldout_accuracy")
    panels = 2 if heldout else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    names = list(report["filters"])
    metrics = ("precision", "recall", "f1")
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        values, errors = [], []
        for name in names:
            value = report["filters"][name][metric]
            if isinstance(value, dict):
                values.append(value["mean"])
                errors.append([value["mean"] - value["low"], value["high"] - value["mean"]])
            else:
                values.append(value)
                errors.append([0.0, 0.0])
        xs = [i + (j - 1) * width for i in range(len(names))]
        spread = list(zip(*errors, strict=True)) if any(any(e) for e in errors) else None
        ax.bar(xs, values, width, label=metric, yerr=spread, capsize=2)
    if report.get("pairs"):
        # Flagging at random reaches this precision: the share of flipped pairs.
        ax.axhline(report["flipped"] / report["pairs"], ls="--", lw=1, color="gray",
                   label="precision of random flagging")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("flagging the injected flips")
    ax.legend(fontsize=8)
    if heldout:
        ax2 = axes[0][1]
        labels = list(heldout)
        means = [heldout[n]["mean"] for n in labels]
        err = [[heldout[n]["mean"] - heldout[n]["low"] for n in labels],
               [heldout[n]["high"] - heldout[n]["mean"] for n in labels]]
        ax2.bar(range(len(labels)), means, yerr=err, capsize=4,
                color=["#c44e52", "#55a868", "#8fbc8f", "#8c8c8c", "#4c72b0"][: len(labels)])
        ax2.set_xticks(range(len(labels)), labels, rotation=15, ha="right", fontsize=8)
        low = max(0.0, min(h["low"] for h in heldout.values()) - 0.05)
        ax2.set_ylim(low, 1.0)
        ax2.set_title("RM accuracy on the clean held-out set (95% CI)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(out: Path, name: str, report: dict[str, Any], title: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    plot_quality(report, png_path, title)
    return json_path, png_path


def register(bench_app: typer.Typer) -> None:
    """Add `quality` and `world` to `synpref bench`."""

    @bench_app.command("quality")
    @friendly_errors
    def quality(
        workspace: Annotated[str, typer.Option("--workspace", "-w",
                                               help="Workspace whose pool is measured.")],
        config: ConfigOpt = None,
        flip_share: Annotated[float, typer.Option(help="Share of labels flipped at random.")] = 0.1,
        length_bias: Annotated[float, typer.Option(help="Share of pairs set to 'longer is chosen'.")] = 0.0,
        seed: Annotated[int, typer.Option(help="Seeds the selection, the gold seed and the noise.")] = 0,
        pairs: Annotated[int | None, typer.Option(help="Measure on this many pairs (default: all).")] = None,
        seed_size: Annotated[int | None,
                             typer.Option(help="Untouched gold seed (default: loop.seed_size).")] = None,
        out: Annotated[str | None, typer.Option(help="Workspace for the noised copy "
                                                "(default: <workspace>-quality-s<seed>).")] = None,
    ) -> None:
        """Inject known label noise into a copy of the pool, run the loop, score every filter."""
        _quiet()
        from flows.quality import embedded_default_config, run_quality_meter

        # Without a config, the embedded default's loop (the same judges and RMs as `bench world`).
        cfg = load_config(config) if config else embedded_default_config(pairs or 1_000)
        target = out or f"{workspace.rstrip('/')}-quality-s{seed}"
        started = time.perf_counter()
        report = run_quality_meter(cfg, workspace, target, flip_share=flip_share,
                                   length_bias=length_bias, seed=seed, pairs=pairs, seed_size=seed_size,
                                   progress=lambda m: console.print(f"[dim]{m}[/]"))
        report["seconds"] = time.perf_counter() - started
        report["machine"] = machine_info()
        console.print(table(f"Flip detection: {report['flipped']} of {report['pairs']} pairs flipped",
                            FILTER_COLUMNS, detection_rows(report["filters"])))
        _print_curated(report)
        title = f"quality meter on {workspace} (flip {flip_share}, length {length_bias})"
        json_path, png_path = _write(Path(target) / "quality", "bench-quality", report, title)
        console.print(f"{report['seconds']:.0f} s; machine: {report['machine']}")
        console.print(f"json: {json_path}  png: {png_path}")

    @bench_app.command("world")
    @friendly_errors
    def world(
        config: ConfigOpt = None,
        seeds: Annotated[int, typer.Option(help="Worlds to average over.")] = 3,
        first_seed: Annotated[int, typer.Option(help="Seeds run from here (first_seed + N - 1).")] = 0,
        pairs: Annotated[int, typer.Option(help="Pairs in each world's pool.")] = 1200,
        heldout: Annotated[int, typer.Option(help="Clean held-out pairs per world.")] = 400,
        gold_share: Annotated[float, typer.Option(help="Share of the pool in the gold seed.")] = 0.2,
        flip_share: Annotated[float, typer.Option(help="Share of labels flipped at random.")] = 0.25,
        length_bias: Annotated[float, typer.Option(help="Share of pairs set to 'longer is chosen'.")] = 0.10,
        out: Annotated[str, typer.Option(help="Folder for the worlds and the report.")] = "runs/world",
        modality: Annotated[str, typer.Option(help="text, or image: the known-truth image world "
                                              "(flip detection only).")] = "text",
    ) -> None:
        """The known-truth synthetic world: flip detection and held-out RM accuracy, several seeds."""
        _quiet()
        if modality == "image":
            _image_world(config, seeds, first_seed, pairs, gold_share, flip_share, out)
            return
        if modality != "text":
            raise typer.BadParameter(f"--modality is text or image, not {modality!r}")
        from flows.quality import embedded_default_config, run_world_experiment
        from pipeline.quality.world import WorldConfig

        cfg = load_config(config) if config else embedded_default_config(pairs)
        wcfg = WorldConfig(pairs=pairs, heldout=heldout, gold_share=gold_share, flip_share=flip_share,
                           length_bias=length_bias)
        started = time.perf_counter()
        report = run_world_experiment(cfg, wcfg, list(range(first_seed, first_seed + seeds)), out,
                                      progress=lambda m: console.print(f"[dim]{m}[/]"))
        report["seconds"] = time.perf_counter() - started
        report["machine"] = machine_info()
        console.print(table("Held-out RM accuracy (mean over seeds, 95% bootstrap CI)",
                            ["trained on", "pairs", "accuracy"],
                            [[n, round(report["train_pairs"][n]), interval_text(i)]
                             for n, i in report["heldout_accuracy"].items()]))
        console.print(table("Flip detection (mean over seeds, 95% bootstrap CI)",
                            ["filter", "pairs", "precision", "recall", "f1", "clean discarded"],
                            [[n, round(f["pairs"]), interval_text(f["precision"]), interval_text(f["recall"]),
                              interval_text(f["f1"]), interval_text(f["clean_discard_rate"])]
                             for n, f in report["filters"].items()]))
        console.print(f"label errors left in the curated set: {interval_text(report['curated_error_rate'])}")
        for target, met in report["targets"].items():
            console.print(f"  {'[green]met[/]' if met else '[red]not met[/]'}  {target}")
        json_path, png_path = _write(Path(out), "bench-world", report,
                                     f"synthetic world, {seeds} seeds, {pairs} pairs, flip {flip_share}, "
                                     f"length bias {length_bias}")
        console.print(f"{report['seconds']:.0f} s; machine: {report['machine']}")
        console.print(f"json: {json_path}  png: {png_path}")


def _image_world(config: Any, seeds: int, first_seed: int, pairs: int, gold_share: float,
                 flip_share: float, out: str) -> None:
    """`bench world --modality image`: the image world through the loop, flip detection per filter."""
    from flows.quality import embedded_default_config
    from flows.quality_image import run_image_world_experiment
    from pipeline.quality.world_image import ImageWorldConfig

    cfg = load_config(config) if config else embedded_default_config(pairs)
    started = time.perf_counter()
    world = ImageWorldConfig(pairs=pairs, heldout=0, gold_share=gold_share)
    report = run_image_world_experiment(cfg, world, list(range(first_seed, first_seed + seeds)), out,
                                        flip_share=flip_share,
                                        progress=lambda m: console.print(f"[dim]{m}[/]"))
    report["seconds"] = time.perf_counter() - started
    report["machine"] = machine_info()
    console.print(table("Image world: flip detection (mean over seeds, 95% CI)",
                        ["filter", "pairs", "precision", "recall", "f1", "clean discarded"],
                        [[n, round(f["pairs"]), interval_text(f["precision"]), interval_text(f["recall"]),
                          interval_text(f["f1"]), interval_text(f["clean_discard_rate"])]
                         for n, f in report["filters"].items()]))
    for target, met in report["targets"].items():
        console.print(f"  {'[green]met[/]' if met else '[red]not met[/]'}  {target}")
    json_path, png_path = _write(Path(out), "bench-world-image", report,
                                 f"image world, {seeds} seeds, {pairs} pairs, flip {flip_share}")
    console.print(f"{report['seconds']:.0f} s; machine: {report['machine']}")
    console.print(f"json: {json_path}  png: {png_path}")


def _print_curated(report: dict[str, Any]) -> None:
    curated, recycling = report["curated"], report.get("recycling")
    console.print(f"curated set: {curated['kept']} kept + {curated['relabeled']} relabeled, "
                  f"label error rate {curated['error_rate']:.3f} (noise injected: "
                  f"{report['flipped'] / max(report['pairs'], 1):.3f})")
    if recycling:
        console.print(f"recycling every filter-B discard: {recycling['errors_fixed']} flips fixed, "
                      f"{recycling['errors_introduced']} clean pairs mislabeled; error rate "
                      f"{recycling['error_rate_kept']:.3f} kept-only -> "
                      f"{recycling['error_rate_recycled']:.3f} with recycling")


def _quiet() -> None:
    import os

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A loaded machine can take longer than Prefect's 20 s default to start its local API.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
