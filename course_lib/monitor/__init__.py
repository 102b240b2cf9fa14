"""Debugging and monitoring asyncio, live (chapter 5): task trees, watchdog, debug mode, leaks."""

__all__: list[str] = []
