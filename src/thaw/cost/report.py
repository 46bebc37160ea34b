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
    """The terminal's table: the Markdown one with short headers, so that it fits 100 columns."""
    out = Table(title=f"thaw cost: {report.trace.name}, {report.trace.hours:g} h", title_justify="left")
    short = ("", "strategy", "workers", "GPU-h", "$/month", "within SLO", "time to serve", "met", "saves")
    for col in short:
        out.add_column(col, justify="left" if col in ("", "strategy") else "right")
    for sc in report.scenarios:
        for s in sc.strategies:
            row = cells(sc.scenario.name[:5] + ".", s, report)
            row[6] = row[6].split(" ", 1)[1]  # the percentile is in the title of the SLO line below
            out.add_row(*row, style=None if s.slo_met else "red")
    out.caption = (f"SLO: p{report.inputs.slo_percentile:g} time to serve ≤ {report.inputs.slo_seconds:g} s; "
                   "within SLO: share of requests served in time")
    return out


def plot(report: CostReport, path: Path) -> Path:
    """Above: the traffic and the workers each strategy held (optimistic scenario). Below: $ per month."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), gridspec_kw={"height_ratios": [3, 2]})
    hours = [m / 60 for m in range(len(report.trace.per_minute))]
    top.fill_between(hours, report.trace.per_minute, step="post", color="#dddddd", label="traffic (req/s)")
    top.set_xlabel("hours")
    top.set_ylabel("requests per second")
    workers_axis = top.twinx()
    shown = report.scenarios[-1]
    for s, colour in zip(shown.strategies, ("#444444", "#d62728", "#1f77b4"), strict=False):
        workers_axis.step([m / 60 for m in range(len(s.workers_per_minute))], s.workers_per_minute, where="post",
                          color=colour, linewidth=1.2, label=f"{s.strategy}: {s.gpu_hours:,.0f} GPU-h")
    workers_axis.set_ylabel(f"workers ({shown.scenario.name})")
    workers_axis.set_ylim(bottom=0)
    lines, labels = top.get_legend_handles_labels()
    more, more_labels = workers_axis.get_legend_handles_labels()
    top.legend(lines + more, labels + more_labels, fontsize=7, loc="upper left")
    top.set_title(f"{report.trace.name}; SLO p{report.inputs.slo_percentile:g} ≤ {report.inputs.slo_seconds:g} s")

    names = [s.strategy for s in report.scenarios[0].strategies]
    width = 0.8 / len(report.scenarios)
    for k, sc in enumerate(report.scenarios):
        xs = [i + (k - (len(report.scenarios) - 1) / 2) * width for i in range(len(names))]
        bars = bottom.bar(xs, [sc.of(n).dollars_per_month for n in names], width, label=sc.scenario.name,
                          color=("#999999", "#1f77b4")[k % 2])
        for bar, n in zip(bars, names, strict=True):
            s = sc.of(n)
            bottom.annotate(f"SLO {100 * s.slo_attainment:.1f} %" + ("" if s.slo_met else " (missed)"),
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()), textcoords="offset points",
                            xytext=(0, 3), ha="center", fontsize=7)
    bottom.set_xticks(range(len(names)), names)
    bottom.set_ylabel("$ per month")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
