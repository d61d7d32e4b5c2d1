"""``koala tiers``: the measured tier catalog as a table, with each tier's savings against a chosen
large model (what a client saves by not training the large model itself, as in FedAvg), and the
other large models of the kind beside it."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from koala_async.core.tiering import TierSpec


def catalog_rows(tiers: tuple[TierSpec, ...], large: TierSpec,
                 other_large: tuple[TierSpec, ...] = ()) -> list[dict[str, Any]]:
    """One row per client tier (ordered by parameters, then FLOPs), then the chosen large model, then
    ``other_large``; each with its storage and FLOPs reductions against ``large``."""
    rows = []
    ordered = sorted(tiers, key=lambda t: (t.params, t.train_flops_per_sample))
    for t, role in [*((t, "client") for t in ordered), (large, "server"), *((t, "other") for t in other_large)]:
        rows.append({
            "name": t.name, "params": t.params, "bytes_on_disk": t.bytes_on_disk,
            "train_flops_per_sample": t.train_flops_per_sample, "peak_train_bytes": t.peak_train_bytes,
            "storage_reduction": 1 - t.bytes_on_disk / large.bytes_on_disk,
            "flops_reduction": 1 - t.train_flops_per_sample / large.train_flops_per_sample,
            "role": role,
        })
    return rows


def tiers_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, caption="train mem: estimated (4 x params + 2 x one "
                  "batch of activations, fp32); FLOPs: FlopCounterMode, fwd+bwd; savings vs (server)")
    for col in ("model", "params", "disk KiB", "train FLOPs/sample", "mem KiB", "disk saved", "FLOPs saved"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        name = r["name"] + {"client": "", "server": " (server)", "other": " (large)"}[r["role"]]
        table.add_row(name, f"{r['params']:,}", f"{r['bytes_on_disk'] / 1024:,.1f}",
                      f"{r['train_flops_per_sample']:,.0f}", f"{r['peak_train_bytes'] / 1024:,.0f}",
                      f"{r['storage_reduction']:.2%}", f"{r['flops_reduction']:.2%}",
                      end_section=r["role"] == "server")
    return table
