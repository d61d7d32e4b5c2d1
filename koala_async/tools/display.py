"""The live terminal view of a run (rich), and a quiet line-per-interval fallback for CI."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Self

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


class RunView:
    def __init__(self, title: str, quiet: bool = False, console: Console | None = None) -> None:
        self.title = title
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.events: deque[str] = deque(maxlen=6)
        self._live: Live | None = None
        self._last_line = 0.0

    def __enter__(self) -> Self:
        if not self.quiet and self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def event(self, elapsed: float, text: str) -> None:
        line = f"{elapsed:6.1f}s  {text}"
        self.events.append(line)
        if self._live is None:
            self.console.print(line, highlight=False)

    def update(self, elapsed: float, server: dict[str, Any], clients: dict[str, dict[str, Any]],
               online_processes: int | None = None) -> None:
        # What the broker says (retained status, last wills) unless the runner knows better: a
        # SIGSTOPped client still looks online until its keepalive runs out.
        online = sum(1 for c in clients.values() if c.get("online"))
        if online_processes is not None:
            online = min(online, online_processes)
        accuracy = server.get("test_accuracy")
        acc = f"{accuracy:.3f}" if isinstance(accuracy, float) else "-"
        rejected = sum(server.get("rejected", {}).values())
        if self._live is None:
            if time.monotonic() - self._last_line >= 5.0:
                self._last_line = time.monotonic()
                self.console.print(f"{elapsed:6.1f}s  v{server.get('version', 0)} acc={acc} "
                                   f"online={online}/{len(clients)} accepted={server.get('accepted', 0)} "
                                   f"rejected={rejected}", highlight=False)
            return
        table = Table(title=self.title, show_header=True, expand=False)
        for col in ("time", "version", "accuracy", "clients online", "accepted", "rejected", "staleness max"):
            table.add_column(col, justify="right")
        table.add_row(f"{elapsed:.0f}s", str(server.get("version", 0)), acc, f"{online}/{len(clients)}",
                      str(server.get("accepted", 0)), str(rejected), str(server.get("staleness_max", 0)))
        nodes = Table(show_header=True, expand=False, box=None)
        for col in ("client", "state", "tier", "updates", "knows v"):
            nodes.add_column(col)
        for cid, c in sorted(clients.items())[:16]:
            nodes.add_row(cid, c.get("state", "?") if c.get("online") else f"[dim]{c.get('state', 'offline')}[/]",
                          str(c.get("tier", "")), str(c.get("updates_sent", 0)), str(c.get("knowledge_version", 0)))
        self._live.update(Group(table, nodes, "\n".join(self.events)))


def summary_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"koala-async run: {report.get('scenario', '')}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    lm = report["large_model"]
    best = lm.get("best_version")
    rows = [
        ("large model test accuracy (last version)", f"{lm['test_accuracy']:.3f}"),
        ("best version on validation: validation / test",
         f"v{best}: {lm['best_validation_accuracy']:.3f} / {lm['best_test_accuracy']:.3f}"
         + (f" (the last, v{lm['version']}, is below it on validation)" if lm.get("last_below_best") else "")
         if best is not None else "- (no validation split)"),
        ("small models mean accuracy", _acc(report.get("small_models", {}).get("mean_test_accuracy"))),
        ("local-only mean accuracy (same epochs)", _acc(report["local_only"]["mean_test_accuracy"])),
        ("server versions", str(lm["version"])),
        ("updates accepted", str(report["updates"]["accepted"])),
        ("updates rejected", str(sum(report["updates"]["rejected"].values()))),
        ("staleness mean / max", f"{report['staleness']['mean']:.2f} / {report['staleness']['max']}"),
        ("bytes up / down", f"{report['bytes']['up']:,} / {report['bytes']['down']:,}"),
        ("wall time", f"{report['wall_seconds']:.1f} s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def assertions_table(report: dict[str, Any]) -> Table:
    table = Table(title="assertions", show_header=True)
    for col in ("assertion", "result", "measured", "threshold", "detail"):
        table.add_column(col)
    for a in report.get("assertions", []):
        value = a["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        table.add_row(a["name"], "[green]pass[/]" if a["passed"] else "[red]FAIL[/]", shown,
                      str(a["threshold"]), a.get("detail", ""))
    return table


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
