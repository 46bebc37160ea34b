"""``thaw cost``'s table (Markdown and rich) and plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from thaw.cost.model import CostReport, StrategyResult

COLUMNS = ("scenario", "strategy", "workers", "GPU-hours", "$ / month", "SLO attainment", "time to serve",
           "SLO met", "saves vs warm pool")


def cells(scenario: str, s: StrategyResult, report: CostReport) -> list[str]:
    p = report.inputs.slo_percentile
    workers = f"{s.workers}" if s.strategy == "warm pool" else f"≤ {s.workers} (mean {s.mean_workers:.1f})"
    saves = "–" if s.savings_vs_warm_pool is None else f"{100 * s.savings_vs_warm_pool:.0f} %"
    return [scenario, s.strategy, workers, f"{s.gpu_hours:,.1f}", f"${s.dollars_per_month:,.0f}",
            f"{100 * s.slo_attainment:.2f} %", f"p{p:g} {s.time_to_serve:.2f} s", "yes" if s.slo_met else "NO", saves]


def markdown(report: CostReport) -> str:
    i, t = report.inputs, report.trace
    lines = [
        f"Traffic: {t.name}, {t.hours:g} h ({t.requests:,.0f} requests, mean {t.mean_rate:.1f}, peak {t.peak_rate:.1f} "
        f"req/s); {i.capacity:g} req/s per worker, {i.gpus_per_worker} GPU each at ${i.price_per_gpu_hour:g}/GPU-hour; "
        f"SLO: p{i.slo_percentile:g} time to serve ≤ {i.slo_seconds:g} s; autoscaler: target utilisation "
        f"{i.target_utilization:g}, decides every {i.interval} s over {i.window} s of traffic, min {i.min_workers} "
        f"workers; latencies from {i.latencies.source}; seed {i.seed}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for sc in report.scenarios:
        for s in sc.strategies:
            lines.append("| " + " | ".join(cells(sc.scenario.name, s, report)) + " |")
    lines.append("")
    for sc in report.scenarios:
        lines.append(f"- **{sc.scenario.name}**: " + "; ".join(sc.scenario.assumptions) + ".")
    return "\n".join(lines)


def table(report: CostReport) -> Table:
    out = Table(title=f"thaw cost: {report.trace.name}, {report.trace.hours:g} h")
    for col in COLUMNS:
        out.add_column(col, justify="left" if col in ("scenario", "strategy") else "right")
    for sc in report.scenarios:
        for s in sc.strategies:
            row = cells(sc.scenario.name, s, report)
            out.add_row(*row, style=None if s.slo_met else "red")
    return out


def plot(report: CostReport, path: Path) -> Path:
    """$ per month of each strategy in each scenario, with SLO attainment written on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.strategy for s in report.scenarios[0].strategies]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(report.scenarios)
    for k, sc in enumerate(report.scenarios):
        xs = [i + (k - (len(report.scenarios) - 1) / 2) * width for i in range(len(names))]
        values = [sc.of(n).dollars_per_month for n in names]  # type: ignore[arg-type]
        bars = ax.bar(xs, values, width, label=sc.scenario.name, color=("#999999", "#1f77b4")[k % 2])
        for bar, n in zip(bars, names):
            s = sc.of(n)  # type: ignore[arg-type]
            ax.annotate(f"SLO {100 * s.slo_attainment:.1f} %" + ("" if s.slo_met else " ✗"),
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("$ per month")
    ax.set_title(f"{report.trace.name}: p{report.inputs.slo_percentile:g} ≤ {report.inputs.slo_seconds:g} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
