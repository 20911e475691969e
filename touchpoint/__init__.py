"""The `touchpoint` command line and settings wiring (thin: every command calls into a room)."""

__all__: list[str] = []
