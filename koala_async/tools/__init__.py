"""Tools: scenario runner, reports, CLI."""
