"""Render the chart's Grafana dashboards to PNG from real scraped data (docs/images/).

    .venv/bin/python benchmarks/dashboard_images.py

starts the observed stack of the Prometheus tests (benchmarks/observed_stack.py: Prometheus, the
operator against the Kubernetes API emulator, Ray Serve LLM + vLLM on the CPU), sends varying load
for `--duration-s` (concurrency 1, 4, 8, then 2, with repeated prompts), then evaluates every
panel's queries over the run with `/api/v1/query_range` and draws each dashboard as a grid of its
panels (Grafana's layout, titles and legends) with matplotlib. `--prometheus URL --since-s N`
renders from a Prometheus that is already running instead (any that scrapes the same targets).

Panels whose queries return nothing here (kube-state-metrics, pending features, no 5xx) say so.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import observed_stack as stack

OUT: Final = stack.REPO / "docs" / "images"
# Load phases (concurrency, share of the duration): idle start, climb, peak, tail.
PHASES: Final = ((1, 0.25), (4, 0.25), (8, 0.25), (2, 0.25))
GRID_COLUMNS: Final = 24
ROW_HEIGHT_IN: Final = 0.32
WIDTH_IN: Final = 18.0


def drive_load(base_url: str, duration_s: float) -> list[int]:
    """Concurrent chat completions in phases of rising then falling concurrency; returns the statuses."""
    statuses: list[int] = []
    lock = threading.Lock()
    for concurrency, share in PHASES:
        deadline = time.monotonic() + duration_s * share

        def worker(deadline: float = deadline) -> None:
            while time.monotonic() < deadline:
                report = stack.send_traffic(base_url, requests=1, repeat=1)
                with lock:
                    statuses.extend(report.statuses)

        with ThreadPoolExecutor(concurrency) as pool:
            for _ in range(concurrency):
                pool.submit(worker)
    return statuses


def _legend(fmt: str, labels: Mapping[str, str], fallback: str) -> str:
    if not fmt:
        # Tables and stats have no legend: name the series by its labels, like Grafana's columns.
        named = "/".join(labels[k] for k in ("namespace", "name") if k in labels)
        return f"{named} {fallback}".strip()
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


def panel_series(
    prometheus: stack.Prometheus,
    panel: Mapping[str, Any],
    variables: stack.GrafanaVariables,
    start: float,
    end: float,
    step_s: float,
) -> list[tuple[str, list[float], list[float]]]:
    """(legend, times, values) of every series of every target of a panel, over [start, end]."""
    series = []
    for target in panel.get("targets", []):
        expr = variables.substitute(target["expr"])
        for result in prometheus.query_range(expr, start, end, step_s):
            times = [float(t) - start for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            name = _legend(target.get("legendFormat", ""), result["metric"], target.get("refId", ""))
            series.append((name, times, values))
    return series


def render_dashboard(
    dashboard: Mapping[str, Any],
    prometheus: stack.Prometheus,
    variables: stack.GrafanaVariables,
    start: float,
    end: float,
    out: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_s = max(2.0, (end - start) / 240)
    panels = [p for p in stack.panels(dashboard) if p.get("type") != "text"]
    rows: int = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height_in = rows * ROW_HEIGHT_IN + 0.8
    figure = plt.figure(figsize=(WIDTH_IN, height_in))
    figure.suptitle(f"{dashboard['title']} (local stack, {end - start:.0f} s)", fontsize=14, y=1 - 0.25 / height_in)
    top = 1 - 0.7 / height_in

    def box(grid: Mapping[str, int], pad_x: float = 0.012, pad_y: float = 0.45) -> tuple[float, float, float, float]:
        usable = top - 0.02
        left = grid["x"] / GRID_COLUMNS + pad_x * 2.5
        width = grid["w"] / GRID_COLUMNS - pad_x * 3.5
        h = grid["h"] / rows * usable
        bottom = top - (grid["y"] + grid["h"]) / rows * usable
        return left, bottom + pad_y / height_in * 0.6, width, h - pad_y / height_in * 1.4

    for panel in panels:
        kind = panel.get("type")
        grid = panel["gridPos"]
        if kind == "row":
            figure.text(
                grid["x"] / GRID_COLUMNS + 0.01,
                top - (grid["y"] + 0.5) / rows * (top - 0.02),
                panel["title"],
                fontsize=12,
                weight="bold",
            )
            continue
        axes = figure.add_axes(box(grid))
        axes.set_title(panel["title"], fontsize=9, loc="left")
        data = panel_series(prometheus, panel, variables, start, end, step_s)
        if not data:
            axes.text(0.5, 0.5, "no data on the local stack", ha="center", va="center", color="grey", fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        if kind == "timeseries":
            for name, times, values in data:
                axes.plot(times, values, label=name, linewidth=1.2)
            axes.tick_params(labelsize=7)
            axes.set_xlabel("seconds", fontsize=7)
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            if unit:
                axes.set_ylabel(unit, fontsize=7)
            if any(name for name, _, _ in data):
                axes.legend(fontsize=6, loc="upper left", framealpha=0.6)
            axes.grid(alpha=0.3)
        else:
            # stat and table panels: the latest value of each series.
            axes.set_xticks([])
            axes.set_yticks([])
            table: dict[str, list[str]] = {}
            renamed = _table_columns(panel)
            for name, _, values in data:
                row, _, column = name.rpartition(" ")
                table.setdefault(row, []).append(f"{renamed.get(column, column)}={_latest(values):.3g}")
            lines = [f"{row or 'all'}: {'  '.join(cells)}" for row, cells in table.items()][:8]
            if kind == "stat" and len(data) == 1:
                axes.text(0.5, 0.45, f"{_latest(data[0][2]):.3g}", ha="center", va="center", fontsize=22)
            else:
                axes.text(0.03, 0.9, "\n".join(lines), ha="left", va="top", fontsize=7, family="monospace")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dashboard-{Path(dashboard['uid']).name}.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _table_columns(panel: Mapping[str, Any]) -> dict[str, str]:
    """{refId: column title} from the panel's `organize` transformation (`Value #A` -> `desired`)."""
    columns: dict[str, str] = {}
    for step in panel.get("transformations", []):
        for key, title in step.get("options", {}).get("renameByName", {}).items():
            columns[key.removeprefix("Value #")] = title
    return columns


def _latest(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return finite[-1] if finite else float("nan")


def render_all(prometheus: stack.Prometheus, start: float, end: float, out: Path, rate_interval: str) -> list[Path]:
    variables = stack.GrafanaVariables(rate_interval=rate_interval, range=f"{max(60, int(end - start))}s")
    return [render_dashboard(d, prometheus, variables, start, end, out) for d in stack.load_dashboards().values()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=120, help="seconds of load on the local stack")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    parser.add_argument("--prometheus", help="render from this running Prometheus instead of starting the stack")
    parser.add_argument("--since-s", type=float, default=900, help="with --prometheus: the range to render")
    parser.add_argument("--rate-interval", default="30s", help="value of Grafana's $__rate_interval")
    args = parser.parse_args(argv)
    if args.prometheus:
        prometheus = stack.Prometheus(Path(tempfile.gettempdir()), {}, external_url=args.prometheus)
        end = time.time()
        paths = render_all(prometheus, end - args.since_s, end, args.out, args.rate_interval)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="dashboard-images-", ignore_cleanup_errors=True) as workdir,
            stack.observed_stack(Path(workdir)) as run,
        ):
            statuses = drive_load(run.serving.base_url, args.duration_s)
            print(f"sent {len(statuses)} requests: {sum(s == 200 for s in statuses)} answered 200", file=sys.stderr)
            time.sleep(15)  # Ray's metrics export and the last scrapes
            paths = render_all(run.prometheus, run.started_at, time.time(), args.out, args.rate_interval)
    for path in paths:
        print(path.relative_to(stack.REPO) if path.is_relative_to(stack.REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
