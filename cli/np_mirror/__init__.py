"""The `np-mirror` command: a thin Typer layer over `npclient`."""
