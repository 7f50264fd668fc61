"""Agent run statuses, exactly as the Codegen API spells them (UPPERCASE).

The OpenAPI document types ``status`` as a free string. The values seen in practice
are below; Codegen's own clients also meet ``RUNNING`` and ``STOPPED``. The
lowercase spellings in Codegen's prose docs (``"completed"``) are wrong and are not
recognised: a status is compared verbatim, and anything unknown (or ``None``) is
treated as still in progress, so a new value never ends a wait by accident.

Where the in-between values go:

- ``PAUSED`` is *not* terminal: the agent waits for input and
  ``POST .../agent/run/resume`` sets it going again. A wait on a paused run goes on
  until its deadline (``NEEDS_INPUT`` lets a caller notice and resume).
- ``EVALUATION`` is *not* terminal: the agent is checking its own work and will still
  move to an outcome.
- ``STOPPED`` is terminal (a stopped run does not move again by itself).
"""

from __future__ import annotations

PENDING = "PENDING"
ACTIVE = "ACTIVE"
RUNNING = "RUNNING"
EVALUATION = "EVALUATION"
PAUSED = "PAUSED"
COMPLETE = "COMPLETE"
FAILED = "FAILED"
ERROR = "ERROR"
CANCELLED = "CANCELLED"
TIMEOUT = "TIMEOUT"
MAX_ITERATIONS_REACHED = "MAX_ITERATIONS_REACHED"
OUT_OF_TOKENS = "OUT_OF_TOKENS"
STOPPED = "STOPPED"

#: The run ended; it will not change again unless resumed.
TERMINAL: frozenset[str] = frozenset(
    {
        COMPLETE,
        FAILED,
        ERROR,
        CANCELLED,
        TIMEOUT,
        MAX_ITERATIONS_REACHED,
        OUT_OF_TOKENS,
        STOPPED,
    }
)
#: The run ended well.
SUCCESS: frozenset[str] = frozenset({COMPLETE})
#: The run ended without success.
FAILURE: frozenset[str] = TERMINAL - SUCCESS
#: The agent is working (queued, running, checking its work).
IN_PROGRESS: frozenset[str] = frozenset({PENDING, ACTIVE, RUNNING, EVALUATION})
#: The agent waits for a human: ``resume`` it with a new prompt.
NEEDS_INPUT: frozenset[str] = frozenset({PAUSED})
#: Every status this module knows. Anything else is kept verbatim and is non-terminal.
KNOWN: frozenset[str] = TERMINAL | IN_PROGRESS | NEEDS_INPUT


def is_terminal(status: str | None) -> bool:
    """True when ``status`` is one of ``TERMINAL``. Unknown values and ``None`` are not."""
    return status in TERMINAL


def is_success(status: str | None) -> bool:
    """True when the run ended well (``COMPLETE``)."""
    return status in SUCCESS


def is_failure(status: str | None) -> bool:
    """True when the run ended without success (``FAILED``, ``ERROR``, ``CANCELLED``, ...)."""
    return status in FAILURE


def is_known(status: str | None) -> bool:
    """True when ``status`` is a value this module knows (exact, case-sensitive)."""
    return status in KNOWN
