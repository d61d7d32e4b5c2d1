"""Scenario assertions, checked on what the runner observed: each returns name, passed, the measured
value and the threshold it was held against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from koala_async.tools.timeline import DOWN_ACTIONS, resolve_target

if TYPE_CHECKING:
    from koala_async.tools.runner import Observer
    from koala_async.tools.scenario import AssertionSpec, Scenario


def _result(spec: AssertionSpec, passed: bool, value: Any, threshold: Any, detail: str = "") -> dict[str, Any]:
    return {"name": spec.label, "kind": spec.kind, "passed": bool(passed), "value": value,
            "threshold": threshold, "detail": detail}


def evaluate(spec: AssertionSpec, scenario: Scenario, obs: Observer, events: list[dict[str, Any]]) -> dict[str, Any]:
    srv = obs.server
    if spec.kind == "final_accuracy":
        acc = srv.get("test_accuracy")
        ok = isinstance(acc, float) and acc >= (spec.min or 0.0)
        return _result(spec, ok, acc, f">= {spec.min}")
    if spec.kind == "max_staleness":
        value = obs.staleness_max_seen
        return _result(spec, value <= (spec.max or 0), value, f"<= {spec.max}")
    if spec.kind == "nothing_accepted_lost":
        return _nothing_lost(spec, obs, events)
    if spec.kind == "reconnected_after_broker_restart":
        return _reconnected(spec, obs, events)
    if spec.kind == "learning_while_down":
        return _learning_while_down(spec, obs, events)
    if spec.kind == "all_contributed":
        ids = resolve_target(spec.target, scenario.client_ids(), scenario.groups(), scenario.broker.count)
        need = int(spec.min if spec.min is not None else 1)
        by_client = srv.get("accepted_by_client", {})
        short = sorted(c for c in ids if by_client.get(c, 0) < need)
        return _result(spec, not short, len(ids) - len(short), f"all {len(ids)} with >= {need} accepted",
                       f"short: {short}" if short else "")
    raise ValueError(spec.kind)


def _nothing_lost(spec: AssertionSpec, obs: Observer, events: list[dict[str, Any]]) -> dict[str, Any]:
    """For every server crash: the accepted count the restarted server reports first (before anything
    new could be accepted... or after: it can only be higher) must be >= the last count seen before."""
    kills = [e for e in events if e["target"] == "server" and e["action"] in ("kill", "stop")]
    if not kills:
        return _result(spec, False, None, ">= 0 lost", "the timeline never stopped the server")
    worst: int | None = None
    details = []
    for kill in kills:
        restart = next((e for e in events if e["target"] == "server" and e["action"] == "start"
                        and e["at"] >= kill["at"]), None)
        if restart is None:
            details.append(f"server stopped at {kill['at']}s never restarted")
            worst = -kill["server_accepted"] if worst is None else min(worst, -kill["server_accepted"])
            continue
        after = next((s for s in obs.samples if s["t"] > restart["at"] and s["online"]), None)
        if after is None:
            details.append(f"no status from the server restarted at {restart['at']}s")
            worst = -kill["server_accepted"] if worst is None else min(worst, -kill["server_accepted"])
            continue
        diff = after["accepted"] - kill["server_accepted"]
        details.append(f"accepted {kill['server_accepted']} before the crash at {kill['at']}s, "
                       f"{after['accepted']} first reported after the restart")
        worst = diff if worst is None else min(worst, diff)
    return _result(spec, worst is not None and worst >= 0, worst, ">= 0 (after minus before)", "; ".join(details))


def _reconnected(spec: AssertionSpec, obs: Observer, events: list[dict[str, Any]]) -> dict[str, Any]:
    kills = [e for e in events if _is_broker(e["target"]) and e["action"] in ("kill", "stop")]
    if not kills:
        return _result(spec, False, None, "all survivors", "the timeline never stopped or killed a broker")
    kill = kills[-1]
    final = obs.server.get("accepted_by_client", {})
    gone = {e["target"] for e in events if e["at"] >= kill["at"] and e["action"] in ("kill", "stop")}
    survivors = [c for c in kill["alive"] if c not in gone]
    silent = sorted(c for c in survivors if final.get(c, 0) <= kill["accepted_by_client"].get(c, 0))
    return _result(spec, bool(survivors) and not silent, len(survivors) - len(silent),
                   f"all {len(survivors)} surviving clients contributed after {kill['target']} went down at "
                   f"{kill['at']}s",
                   f"silent: {silent}" if silent else "")


def _learning_while_down(spec: AssertionSpec, obs: Observer, events: list[dict[str, Any]]) -> dict[str, Any]:
    if spec.window:
        t0, t1 = spec.window
    else:
        down = [e for e in events if e["action"] in DOWN_ACTIONS and e["target"] != "server"
                and not _is_broker(e["target"])]
        if not down:
            return _result(spec, False, None, "versions gained", "no client went down")
        t0 = down[0]["at"]
        back = [e for e in events if e["at"] > t0 and e["action"] in ("start", "resume", "restore")
                and e["target"] != "server" and not _is_broker(e["target"])]
        t1 = back[0]["at"] if back else (obs.samples[-1]["t"] if obs.samples else t0)
    inside = [s for s in obs.samples if t0 <= s["t"] <= t1]
    before = [s for s in obs.samples if s["t"] <= t0]
    start_version = before[-1]["version"] if before else 0
    gained = (max(s["version"] for s in inside) - start_version) if inside else 0
    need = int(spec.min if spec.min is not None else 1)
    return _result(spec, gained >= need, gained, f">= {need} new versions in [{t0:.1f}s, {t1:.1f}s]")


def _is_broker(target: str) -> bool:
    return target == "broker" or target.startswith("broker-")
