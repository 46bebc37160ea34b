"""``thaw cost``: a warm pool sized for the SLO vs autoscaling with cold starts or with restores, in $.

::

    thaw cost --price 4.5 --capacity 2 --profile diurnal:low=2,high=40 --bench result.json
    thaw cost --price 4.5 --capacity 2 --profile steady:rate=10 --cold-start 40 --restore 3

Writes cost.json, cost.md and cost.png to --out; docs/cost.md describes the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from thaw.cli.output import console, friendly
from thaw.cli.sections import replace_section
from thaw.errors import ConfigError

SECTION = "thaw-cost"
#: the command line's name of each input, for errors
FLAGS = {
    "price_per_gpu_hour": "--price",
    "capacity": "--capacity",
    "gpus_per_worker": "--gpus-per-worker",
    "slo_percentile": "--slo",
    "slo_seconds": "--slo",
    "target_utilization": "--target-utilization",
    "interval": "--interval",
    "window": "--window",
    "min_workers": "--min-workers",
    "arrivals": "--arrivals",
}


@friendly
def cost(
    price: Annotated[float, typer.Option("--price", help="$ per GPU-hour")],
    capacity: Annotated[float, typer.Option("--capacity", help="requests per second one worker serves")],
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            help="steady:rate=R | bursty:base=B,peak=P[,every=MIN,length=MIN] | diurnal:low=L,high=H | "
            "csv:PATH (req/s per minute)",
        ),
    ],
    bench: Annotated[Optional[Path], typer.Option("--bench", help="latencies from this thaw bench result.json")] = None,
    cold_start: Annotated[
        Optional[float],
        typer.Option("--cold-start", metavar="SECONDS", help="every cold start takes this long (instead of --bench's)"),
    ] = None,
    restore: Annotated[
        Optional[float],
        typer.Option("--restore", metavar="SECONDS", help="every restore takes this long (instead of --bench's)"),
    ] = None,
    restore_success: Annotated[
        Optional[float],
        typer.Option("--restore-success", help="share of restores that succeed, with --restore [default: 1]"),
    ] = None,
    hours: Annotated[float, typer.Option("--hours", help="length of a generated profile")] = 24.0,
    slo: Annotated[str, typer.Option("--slo", help="pP<=SECONDS: time to serve at percentile P")] = "p90<=5",
    gpus_per_worker: Annotated[int, typer.Option("--gpus-per-worker")] = 1,
    target_utilization: Annotated[
        float, typer.Option("--target-utilization", help="the autoscaler's target load per worker")
    ] = 0.7,
    interval: Annotated[int, typer.Option("--interval", help="seconds between autoscaler decisions")] = 10,
    window: Annotated[int, typer.Option("--window", help="seconds of traffic the autoscaler averages")] = 60,
    min_workers: Annotated[int, typer.Option("--min-workers", help="the autoscaler never goes below this")] = 0,
    arrivals: Annotated[
        str, typer.Option("--arrivals", help="poisson (random, seeded) or fluid (exactly the rate)")
    ] = "poisson",
    seed: Annotated[int, typer.Option("--seed", help="the simulation's seed: same seed, same result")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write cost.json, cost.md, cost.png here")] = None,
    readme: Annotated[
        Optional[Path],
        typer.Option("--readme", help=f"replace the <!-- {SECTION} --> section of this file with the table"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result JSON")] = False,
) -> None:
    """What a warm pool sized for the SLO costs next to autoscaling with cold starts or with restores."""
    from pydantic import ValidationError

    from thaw.cost import report as render
    from thaw.cost.model import Inputs
    from thaw.cost.scenarios import run
    from thaw.cost.traffic import parse

    percentile, seconds = _slo(slo)
    trace = parse(profile, hours)
    try:
        inputs = Inputs(
            price_per_gpu_hour=price,
            gpus_per_worker=gpus_per_worker,
            capacity=capacity,
            slo_percentile=percentile,
            slo_seconds=seconds,
            target_utilization=target_utilization,
            interval=interval,
            window=window,
            min_workers=min_workers,
            arrivals=arrivals,
            seed=seed,
            latencies=_latencies(bench, cold_start, restore, restore_success),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "input"
        raise ConfigError(FLAGS.get(field, field), first.get("msg", "")) from None
    result = run(inputs, trace)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(result.model_dump_json(indent=2) + "\n")
        (out / "cost.md").write_text(render.markdown(result) + "\n")
        render.plot(result, out / "cost.png")
    if readme is not None:
        replace_section(readme, SECTION, render.markdown(result))
    if json_out:
        typer.echo(result.model_dump_json(indent=2))
        return
    console.print(render.table(result))
    for sc in result.scenarios:
        console.print(f"[bold]{sc.scenario.name}[/]: " + "; ".join(sc.scenario.assumptions))
    if out is not None:
        console.print(f"wrote {out}/cost.json, cost.md, cost.png")


def _slo(text: str) -> tuple[float, float]:
    head, sep, tail = text.replace(" ", "").partition("<=")
    try:
        if not sep or not head.startswith("p"):
            raise ValueError
        return float(head[1:]), float(tail)
    except ValueError:
        raise ConfigError("--slo", f"{text!r} is not pP<=SECONDS", hint="e.g. p90<=5 or p99<=10") from None


def _latencies(bench: Path | None, cold_start: float | None, restore: float | None, success: float | None):  # type: ignore[no-untyped-def]
    from thaw.bench.schema import load_result
    from thaw.cost.model import Latencies
    from thaw.cost.scenarios import latencies_from_bench

    if bench is not None:
        lat = latencies_from_bench(load_result(bench), str(bench))
        update: dict[str, object] = {}
        if cold_start is not None:
            update.update(cold=[cold_start], cold_fastest=[], source=f"{bench}, cold start {cold_start:g} s given")
        if restore is not None:
            update.update(restore=[restore], restore_fastest=[], source=f"{bench}, restore {restore:g} s given")
        return lat.model_copy(update=update) if update else lat
    if cold_start is None or restore is None:
        raise ConfigError(
            "--bench",
            "no latencies: give a thaw bench result, or --cold-start and --restore",
            hint="thaw cost ... --bench thaw-bench/NAME-DATE/result.json",
        )
    rate = 1.0 if success is None else success
    if not 0 < rate <= 1:
        raise ConfigError("--restore-success", f"{rate:g} is not in (0, 1]")
    return Latencies(
        source=f"given: cold start {cold_start:g} s, restore {restore:g} s, {100 * rate:g} % succeed",
        cold=[cold_start],
        restore=[restore],
        restore_success=rate,
    )
