"""The limits of one HTTP call to a provider: a total deadline and a cap on the answer.

**The deadline.** ``OPENAI_TIMEOUT`` and ``CODEGEN_TIMEOUT`` are the seconds a whole call
may take, from connecting to the last byte of the answer. The HTTP libraries' own
timeouts are per socket operation and start again at every byte, so a server that
trickles one byte every few seconds would otherwise hold a call (and a worker thread)
forever. One number bounds both: each operation's timeout is at most the time left.
Past it the call fails with ``ProviderTimeoutError(timeout_duration=<the setting>)``,
retryable as any timeout. Name resolution is the one step no deadline interrupts
(``getaddrinfo`` blocks); everything after it is bounded.

**The cap.** An answer is read as a stream, counted after decoding, and never held past
``AIW_MAX_ANSWER_BYTES``. A success status whose declared ``Content-Length`` or bytes read
pass the cap fails with ``AnswerTooLargeError`` the moment it does: reading stops there
and nothing of the answer is kept. The body of an error status is cut at the cap
instead (only its first lines become the error's message), so a 429 or a 503 keeps its
meaning however large its body.

Each HTTP client enforces these its own way: ``app.ai.transport`` under the OpenAI SDK
(httpx2), ``app.codegen.transport`` under the Codegen client (requests). What they share
is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from app.core.errors import AnswerTooLargeError

#: Default of ``AIW_MAX_ANSWER_BYTES``: far above any chat completion (128k tokens of text
#: is about 0.5 MB) or Codegen page, low enough that a worker's threads cannot be made to
#: hold gigabytes.
DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024
MAX_ANSWER_SETTING = "AIW_MAX_ANSWER_BYTES"


class Deadline:
    """The instant a call must be over by, ``seconds`` after it was made (monotonic clock)."""

    __slots__ = ("_clock", "at", "seconds")

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = float(seconds)
        self._clock = clock
        self.at = clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.at - self._clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def clamp(self, timeout: float | None) -> float:
        """``timeout`` cut to the time left (``None``, no timeout, becomes the time left)."""
        remaining = max(0.0, self.remaining())
        return remaining if timeout is None else min(timeout, remaining)

    def __repr__(self) -> str:
        return f"<Deadline {self.seconds:g}s, {self.remaining():.3f}s left>"


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The body's size as the headers declare it, when it is not encoded (else ``None``).

    ``headers`` is a case-insensitive mapping (requests' or httpx2's headers).
    """
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    raw = headers.get("content-length")
    if encoding != "identity" or raw is None:
        return None
    try:
        length = int(raw.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def answer_too_large(
    limit: int,
    *,
    provider_name: str,
    what: str = "the answer",
    status_code: int | None = None,
    request_id: str | None = None,
) -> AnswerTooLargeError:
    """The error for an answer past the cap, naming the cap and its setting."""
    return AnswerTooLargeError(
        f"{what} is larger than {limit:,} bytes, the cap set by {MAX_ANSWER_SETTING}: "
        "reading stopped at the cap and nothing of it was kept",
        limit_bytes=limit,
        provider_name=provider_name,
        status_code=status_code,
        request_id=request_id,
    )
