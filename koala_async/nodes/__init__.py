"""Nodes: async lifecycles wiring the core, learning and I/O layers."""
