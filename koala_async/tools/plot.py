"""The run's PNG: accuracy over time with churn events marked, updates per client, staleness histogram."""

from __future__ import annotations

from typing import Any

COLORS = {"kill": "red", "stop": "orange", "start": "green", "pause": "purple", "resume": "violet",
          "cut": "brown", "restore": "olive"}


def plot_report(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_upd, ax_stale) = plt.subplots(1, 3, figsize=(16, 4.5))
    samples = report.get("samples", [])
    xs = [s["t"] for s in samples if isinstance(s.get("accuracy"), float)]
    ys = [s["accuracy"] for s in samples if isinstance(s.get("accuracy"), float)]
    ax_acc.plot(xs, ys, "-", color="tab:blue", label="large model accuracy")
    seen: set[str] = set()
    for event in report.get("events", []):
        color = COLORS.get(event["action"], "gray")
        label = event["action"] if event["action"] not in seen else None
        seen.add(event["action"])
        ax_acc.axvline(event["at"], color=color, alpha=0.5, linestyle="--", label=label)
        ax_acc.annotate(event["target"], (event["at"], 0.02), rotation=90, fontsize=6, color=color)
    ax_acc.set(xlabel="seconds", ylabel="held-out accuracy", ylim=(0, 1), title="accuracy and churn events")
    ax_acc.legend(fontsize=7, loc="lower right")
    clients = report.get("clients", {})
    names = sorted(clients)
    ax_upd.bar(names, [clients[c].get("accepted") or 0 for c in names], color="tab:green")
    ax_upd.set(title="accepted updates per client (final server)", ylabel="updates")
    ax_upd.tick_params(axis="x", rotation=60, labelsize=7)
    hist = report.get("staleness", {}).get("histogram", {})
    keys = sorted(hist, key=lambda k: int(k.rstrip("+")))
    ax_stale.bar(keys, [hist[k] for k in keys], color="tab:purple")
    ax_stale.set(title="staleness of accepted updates", xlabel="staleness (versions)", ylabel="updates")
    verdict = "PASS" if report.get("exit_code") == 0 else "FAIL"
    fig.suptitle(f"{report.get('scenario')}: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
