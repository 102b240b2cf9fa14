"""What Redis replies, made fit for Python: text, field names kept whole, OOM recognised.

    _text(b"queued")          # 'queued' (the client may decode responses, or not)
    _name(b"\\xff\\xfe")        # b'\\xff\\xfe': a name that is not UTF-8 stays bytes

Shared by the client side (``queue``, ``dead_letters``) and the worker (``worker``,
``running``), which import these names from ``queue`` as they always did.
"""

from __future__ import annotations

__all__: list[str] = []  # private helpers of the package

from typing import Any

import redis.exceptions


def _text(value: Any) -> str:
    """A reply as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _name(value: Any) -> str | bytes:
    """A field name as str, or as its bytes when they are not UTF-8 (kept as they were)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return str(value)


def _unprefixed(name: str | bytes) -> str | bytes:
    return name.removeprefix(b"extra:") if isinstance(name, bytes) else name.removeprefix("extra:")


def _surrogate(name: str | bytes) -> str:
    """A name as str without loss: bytes that are not UTF-8 become lone surrogates."""
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def _escaped(value: str | bytes) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write for lack of memory (``maxmemory`` reached, nothing evicted)?

    Redis 7 replies ``-OOM``, also from a script; 6.2 wraps it in the script's ``ERR``.
    """
    return (isinstance(exc, redis.exceptions.OutOfMemoryError)
            or "OOM command not allowed" in str(exc))
