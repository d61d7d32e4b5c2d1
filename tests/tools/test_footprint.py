"""The client footprint measurement runs end to end, and the smallest tier stays under 300 MB."""

from __future__ import annotations

import pytest

from koala_async.tools.bench.footprint import measure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


async def test_smallest_tier_client_peaks_below_300_mb() -> None:
    result = await measure(tier="image-tiny", updates=2, idle_seconds=1.0, import_runs=1, timeout=100)
    print(f"\nidle {result['idle_rss_mib']} MiB, peak {result['peak_rss_mib']} MiB "
          f"({result['peak_rss_mb']} MB), import {result['import_s']} s")
    assert result["idle_rss_bytes"] and result["pid_samples"] > 10
    assert result["idle_rss_bytes"] <= result["peak_rss_bytes"]
    assert result["peak_rss_mb"] < 300, "a client training image-tiny must stay below 300 MB resident"
    assert 0 < result["import_s"] < 10
    assert {row["module"] for row in result["heaviest"]} & {"numpy", "aiomqtt", "paho", "asyncio"}
