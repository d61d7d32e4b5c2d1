"""Sans-IO core: messages, validation, staleness, fusion, dedupe.

Nothing here imports asyncio, aiomqtt, psutil or torch. Functions take data (and ``now`` where time
matters) and return decisions, so they are testable without a broker or a clock and embeddable in any
event loop.
"""
