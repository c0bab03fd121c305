"""The benchmark's Markdown report and plot: the in-process figures, every load step, and the
side-by-side ratios at the highest concurrency."""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision

from benchmarks.footprint import Footprint
from benchmarks.load import STAGES, LoadResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes  # matplotlib itself is imported only to plot


@dataclass(frozen=True)
class InProcess:
    """Images per second without a server, by label: (c) eager, (c') compiled, (d) handler,
    (e) handler explaining."""

    eager: dict[str, float]
    compiled: dict[str, float]
    handler: dict[str, float]
    explained: dict[str, float]

    def rows(self) -> list[str]:
        return [
            f"| ({tag}) {name} | {value:.2f} |"
            for tag, figures in (("c", self.eager), ("c'", self.compiled), ("d", self.handler), ("e", self.explained))
            for name, value in figures.items()
        ]


def write_report(
    out: Path,
    device: torch.device,
    in_process: InProcess,
    results: list[LoadResult],
    footprints: dict[str, Footprint],
    setup: list[str],
    concurrencies: list[int],
) -> Path:
    top = max(concurrencies)
    ours, stock = (_step(results, target, top, "REST") for target in ("ours", "stock"))
    lines = [
        f"# Benchmark: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- command: `python -m benchmarks.run {' '.join(sys.argv[1:])}`",
        *(f"- {line}" for line in setup),
        "",
        f"## In-process, on {device.type}: (c) raw eager forward, (c') compiled forward, (d) whole handler, "
        "(e) explaining",
        "",
        "| configuration | img/s |",
        "| --- | --- |",
        *in_process.rows(),
        "",
        "## Served",
        "",
        "| target | protocol | concurrency | img/s | p50 ms | p90 ms | p99 ms | errors "
        "| server queue ms | server inference ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r.target} | {r.protocol} | {r.concurrency} | {r.throughput:.2f} | {r.p50_ms:.0f} | {r.p90_ms:.0f} | "
            f"{r.p99_ms:.0f} | {r.failures} | {_server_timing(r, r.server_queue_ms)} | "
            f"{_server_timing(r, r.server_inference_ms)} |"
            for r in results
        ),
        "",
        "Server timings are TorchServe's own per-request counters (`ts_queue_latency_microseconds`,",
        "`ts_inference_latency_microseconds`); TorchServe 0.12 does not count gRPC requests in them,",
        "and the Ray Serve engine (`ray`) has no such counters.",
        "",
        *_engines(results, footprints, top),
        "## Where a batch's time goes: the handler's own histograms (mean ms per batch)",
        "",
        f"| target | protocol | concurrency | images per batch | {' | '.join(STAGES)} |",
        f"| --- | --- | --- | --- | {' | '.join('---' for _ in STAGES)} |",
        *(
            f"| {r.target} | {r.protocol} | {r.concurrency} | {r.images_per_batch:.1f} | "
            f"{' | '.join(f'{r.handler_stage_ms[stage]:.0f}' for stage in STAGES)} |"
            for r in results
            if r.handler_stage_ms
        ),
        "",
        f"## Ratios at concurrency {top} (REST)",
        "",
        *_ratios(ours, stock, in_process),
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    plot(out / "plot.png", max(in_process.eager.values()), results, concurrencies)
    return report


def _ratios(ours: LoadResult | None, stock: LoadResult | None, in_process: InProcess) -> list[str]:
    if ours is None:
        return []
    lines = [f"- a/b (ours / stock): **{ours.throughput / stock.throughput:.2f}x**"] if stock else []
    lines.append(f"- a/c (ours / best raw eager forward): **{ours.throughput / max(in_process.eager.values()):.2f}x**")
    lines += [
        f"- a/c' (ours / the compiled forward alone): **{ours.throughput / value:.2f}x**"
        for value in in_process.compiled.values()
    ]
    lines += [
        f"- a/d (ours / the handler without the server): **{ours.throughput / value:.2f}x**"
        for value in in_process.handler.values()
    ]
    lines.append(f"- ours p99/p50: **{ours.p99_ms / ours.p50_ms:.2f}**")
    return lines


def _step(results: list[LoadResult], target: str, concurrency: int, protocol: str) -> LoadResult | None:
    return next((r for r in results if (r.target, r.concurrency, r.protocol) == (target, concurrency, protocol)), None)


def _engines(results: list[LoadResult], footprints: dict[str, Footprint], top: int) -> list[str]:
    """Ours on TorchServe and on Ray Serve: throughput and latency on each protocol at the highest
    concurrency, the cold start and the memory."""
    if "ray" not in footprints:
        return []
    lines = [
        f"## The engines side by side: TorchServe (ours) and Ray Serve (ray), concurrency {top}",
        "",
        "| protocol | TorchServe img/s | Ray Serve img/s | ray / ours | TorchServe p50 / p99 ms "
        "| Ray Serve p50 / p99 ms | errors (TorchServe, Ray Serve) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for protocol in ("REST", "gRPC", "OIP"):
        ours, ray = _step(results, "ours", top, protocol), _step(results, "ray", top, protocol)
        if ours and ray:
            lines.append(
                f"| {protocol} | {ours.throughput:.2f} | {ray.throughput:.2f} "
                f"| **{ray.throughput / ours.throughput:.2f}** | {ours.p50_ms:.0f} / {ours.p99_ms:.0f} "
                f"| {ray.p50_ms:.0f} / {ray.p99_ms:.0f} "
                f"| {ours.failures}, {ray.failures} |"
            )
    lines += [
        "",
        "| engine | cold start to first answer, s | memory of each model process (PSS), MiB | the whole engine, MiB |",
        "| --- | --- | --- | --- |",
        *(
            f"| {target} | {f.cold_start_s:.1f} | {', '.join(f'{mib:.0f}' for mib in f.model_processes_mib)} "
            f"| {f.engine_mib:.0f} |"
            for target, f in footprints.items()
        ),
        "",
        "A model process is a TorchServe worker or a Ray Serve replica of the version's deployment;",
        "PSS splits each shared page among the processes that share it, so the figures add up.",
        "",
    ]
    return lines


def _server_timing(result: LoadResult, milliseconds: float) -> str:
    return "n/a" if result.protocol == "gRPC" or math.isnan(milliseconds) else f"{milliseconds:.0f}"


def plot(path: Path, best_raw: float, results: list[LoadResult], concurrencies: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency, stages) = plt.subplots(1, 3, figsize=(18, 4.5))
    for target in ("ours", "ray", "stock"):
        rows = [r for r in results if r.target == target and r.protocol == "REST"]
        throughput.plot([r.concurrency for r in rows], [r.throughput for r in rows], marker="o", label=target)
    throughput.axhline(best_raw, linestyle="--", color="grey", label="raw eager forward (best)")
    throughput.set(xlabel="concurrent clients", ylabel="images / s", title="Throughput (REST)", xticks=concurrencies)
    throughput.legend()
    width = 0.25
    rows = [r for r in results if r.concurrency == max(concurrencies)]
    for i, name in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        latency.bar([j + i * width for j in range(len(rows))], [getattr(r, name) for r in rows], width, label=name[:3])
    labels = [f"{r.target}\n{r.protocol}" for r in rows]
    latency.set_xticks([j + width for j in range(len(rows))], labels)
    latency.set(ylabel="ms (log scale)", yscale="log", title=f"Latency at concurrency {max(concurrencies)}")
    latency.legend()
    _plot_stages(stages, [r for r in results if r.target == "ours" and r.protocol == "REST" and r.handler_stage_ms])
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _plot_stages(axes: Axes, rows: list[LoadResult]) -> None:
    """Per load step, the handler's mean time per batch in each stage (stacked), beside what the
    clients waited for a request (p50 and p99): the rest is queueing and the frontend."""
    positions = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for stage in STAGES[:-1]:
        heights = [r.handler_stage_ms[stage] for r in rows]
        axes.bar(positions, heights, 0.5, bottom=bottom, label=f"handler: {stage}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.scatter(
        positions,
        [r.handler_stage_ms["handler"] for r in rows],
        marker="_",
        s=600,
        color="black",
        label="handler: whole",
        zorder=3,
    )
    axes.plot(positions, [r.p50_ms for r in rows], marker="o", color="tab:red", label="client p50")
    axes.plot(positions, [r.p99_ms for r in rows], marker="^", color="tab:purple", label="client p99")
    axes.set_xticks(positions, [f"c={r.concurrency}\n{r.images_per_batch:.1f} img/batch" for r in rows])
    axes.set(ylabel="ms", title="Ours (REST): the handler's time per batch vs the client's")
    axes.legend(fontsize="small")
