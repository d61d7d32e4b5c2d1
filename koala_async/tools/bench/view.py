"""How ``koala bench`` shows its result: rich tables side by side, and the accuracy-over-time PNG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich import box
from rich.table import Table

# (label, row key, formatter) for the per-mode table.
ROWS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("time to target from launch (s)", "time_to_target_seconds", lambda v: f"{v:.1f}"),
    ("time to target from first report (s)", "time_to_target_from_up_seconds", lambda v: f"{v:.1f}"),
    ("final accuracy", "final_accuracy", lambda v: f"{v:.3f}"),
    ("small models accuracy", "small_models_accuracy", lambda v: f"{v:.3f}"),
    ("staleness when fused (mean)", "fused_staleness_mean", lambda v: f"{v:.2f}"),
    ("bytes up / client", "bytes_up_per_client", lambda v: f"{v / 1024:,.1f} KiB"),
    ("bytes down / client", "bytes_down_per_client", lambda v: f"{v / 1024:,.1f} KiB"),
    ("bytes / update", "bytes_per_update", lambda v: f"{v / 1024:,.2f} KiB"),
    ("client params", "client_params", lambda v: f"{v:,.0f}"),
    ("client train FLOPs / sample", "client_train_flops_per_sample", lambda v: f"{v:,.0f}"),
    ("client peak RSS", "client_rss_peak_bytes", lambda v: f"{v / 2**20:,.1f} MiB"),
    ("updates accepted", "updates_accepted", lambda v: f"{v:,.0f}"),
    ("accepted / s (observed)", "accepted_per_second", lambda v: f"{v:.2f}"),
    ("server ingest capacity (msg/s)", "server_ingest_rate", lambda v: f"{v:,.0f}"),
    ("wall (s)", "wall_seconds", lambda v: f"{v:.1f}"),
)
SPREAD = {"time_to_target_seconds", "time_to_target_from_up_seconds", "final_accuracy", "small_models_accuracy"}


def _cell(value: Any, fmt: Callable[[float], str], spread: dict[str, Any] | None = None) -> str:
    if value is None:
        return "[dim]n/a[/]"
    if spread and spread.get("n", 0) > 1:
        missing = f", {spread['missing']} n/a" if spread.get("missing") else ""
        return f"{fmt(value)} [dim]({fmt(spread['min'])}-{fmt(spread['max'])}{missing})[/]"
    return fmt(value)


def modes_table(result: dict[str, Any]) -> Table:
    target = result.get("target_accuracy")
    seeds = result.get("seeds") or []
    table = Table(title=f"koala bench: {result.get('scenario')} (target accuracy "
                  f"{'n/a' if target is None else f'{target:.3f}'}, {result.get('target_source')}; "
                  f"mean (min-max) over seeds {seeds}; load {result.get('load_average')})",
                  box=box.SIMPLE_HEAD)
    modes = result.get("modes", [])
    table.add_column("figure")
    for mode in modes:
        table.add_column(mode, justify="right")
    for label, key, fmt in ROWS:
        cells = []
        for mode in modes:
            row = result["per_mode"].get(mode)
            spread = (row or {}).get("spread", {}).get(key) if key in SPREAD else None
            cells.append("[dim]skipped[/]" if row is None else _cell(row.get(key), fmt, spread))
        table.add_row(label, *cells)
    return table


def scale_table(result: dict[str, Any]) -> Table:
    """One row per step. Left: the run so far at the end of the step, from the clients' own ledgers
    (published = accepted + rejected + superseded + pending) and the server's accepted count. Right: the
    hold alone: arrivals, versions, arrival-to-fused latency, server CPU per arrival (event loop +
    learner threads), and how busy the whole (shared) machine was."""
    table = Table(title="scale run: counts (run so far) | the hold: latency, server CPU per arrival, machine",
                  box=box.SIMPLE_HEAD)
    for col in ("clients", "conn", "published", "accepted", "rejected", "supersed.", "pending", "server acc.",
                "arrivals/s", "versions", "p50 s", "p99 s", "CPU ms/arr (loop+learn)", "busy", "load"):
        table.add_column(col, justify="right")

    def num(v: Any, fmt: str = "{}") -> str:
        return "n/a" if v is None else fmt.format(v)

    for step in (result.get("scale") or {}).get("steps", []):
        lat = step.get("fuse_latency") or {}
        rejected = step.get("rejected")
        rejected_cell = (" ".join(f"{k}:{v}" for k, v in sorted(rejected.items())) or "0"
                         if isinstance(rejected, dict) else num(rejected))
        cpu = (f"{step['server_cpu_ms_per_arrival']:.1f} ({step['server_loop_cpu_ms_per_arrival']:.1f}+"
               f"{step['server_learner_cpu_ms_per_arrival']:.1f})"
               if step.get("server_cpu_ms_per_arrival") is not None else "n/a")
        table.add_row(*(num(step.get(k)) for k in ("clients", "connected", "published", "accepted")),
                      rejected_cell, *(num(step.get(k)) for k in ("superseded", "pending", "server_accepted",
                                                                  "arrivals_per_second", "versions")),
                      *(f"{lat[k]:.3f}" if isinstance(lat.get(k), (int, float)) else "n/a" for k in ("p50", "p99")),
                      cpu, num(step.get("machine_busy_share"), "{:.0%}"), num(step.get("load_average")))
    final = (result.get("scale") or {}).get("final") or {}
    if final:
        table.caption = (
            f"after the load stopped and every verdict came back ({final.get('drain_seconds')} s): clients "
            f"published {final.get('published')} = accepted {final.get('accepted')} + rejected "
            f"{final.get('rejected')} + superseded {final.get('superseded')} + pending {final.get('pending')}; "
            f"server accepted {final.get('server_accepted')}, superseded {final.get('server_superseded')}, "
            f"rejected {final.get('server_rejected')}: "
            + ("reconciled" if final.get("reconciled") else "[red]NOT reconciled[/]"))
    return table


def summary_table(result: dict[str, Any]) -> Table:
    table = Table(title="summary", box=box.SIMPLE_HEAD)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("why missing")
    reasons = result.get("summary_reasons", {})
    spreads = result.get("summary_spread", {})
    for key, value in result.get("summary", {}).items():
        shown = "null" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
        s = spreads.get(key)
        if value is not None and s and s.get("n", 0) > 1:
            shown += f" ({s['min']:.3g} to {s['max']:.3g}, {s['n']} seeds)"
        table.add_row(key, shown, reasons.get(key, ""))
    ingest = result.get("ingest") or {}
    sides = ("raw", "raw_drain", "runtime", "runtime_acks")
    if all(ingest.get(f"{side}_rate") for side in sides):
        table.add_row("ingest msg/s raw / raw drain / runtime / with acks",
                      " / ".join(f"{ingest[f'{side}_rate']:,.0f}" for side in sides), ingest.get("broker", ""))
        table.add_row("ingest CPU us/message, same order",
                      " / ".join(f"{ingest[f'{side}_cpu_us_per_message']:.0f}" for side in sides),
                      "the subscriber process")
    return table


def plot_modes(result: dict[str, Any], path: str) -> None:
    """Held-out accuracy of the large model against wall time, one line per mode that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (mode, row) in enumerate(result.get("per_mode", {}).items()):
        color = colors[i % len(colors)]
        if row is None:
            ax.plot([], [], label=f"{mode} (skipped)", linestyle=":", color=color)
            continue
        # the runner's fixed-cadence samples of every seed (what time to target is read from)
        for j, grid in enumerate(row.get("grids") or [row.get("grid") or row.get("timeline", [])]):
            points = [p for p in grid if isinstance(p[2], (int, float)) and p[2] == p[2]]
            ax.step([p[0] for p in points], [p[2] for p in points], where="post", color=color, linewidth=1,
                    alpha=0.8, label=mode if j == 0 else None)
    target = result.get("target_accuracy")
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    ax.set(xlabel="wall time (s)", ylabel="held-out accuracy", ylim=(0, 1),
           title=f"accuracy over time by mode: {result.get('scenario')}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
