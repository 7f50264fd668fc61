"""Counting Codegen agent runs for ``CodegenProvider.get_enhanced_stats``.

Two sources, each run counted once:

- ``RunRecord``: the runs one provider started in this process, each with the last
  status seen (thread-safe, in memory, the newest ``MAX_RECORDED_RUNS`` kept);
- ``tracked_runs``: the rows of ``agent_runs`` (the runs the workers create or
  follow), grouped by Codegen's status, read only when a database is there:
  ``DATABASE_URL``, or the embedded SQLite file if it exists (nothing is created).
  An unreachable or unmigrated database is reported, not raised.

``combine`` merges them; a run in both is counted with the database's status.
Statuses are Codegen's, verbatim; a run with no status yet counts as ``NO_STATUS``.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.codegen import status as st

if TYPE_CHECKING:
    from app.config import Settings

#: The key of a run that has no Codegen status yet.
NO_STATUS = "NO_STATUS"
#: Runs ``RunRecord`` remembers (the oldest are forgotten past this).
MAX_RECORDED_RUNS = 10_000
_IN_CHUNK = 500  # ids per ``IN (...)``: well under SQLite's parameter limit


def _key(status: str | None) -> str:
    return NO_STATUS if status is None else status


class RunRecord:
    """The runs one provider started, with their last seen status (thread-safe)."""

    def __init__(self, limit: int = MAX_RECORDED_RUNS) -> None:
        self._lock = threading.Lock()
        self._runs: OrderedDict[int, str | None] = OrderedDict()
        self._limit = limit

    def started(self, run_id: int, status: str | None) -> None:
        with self._lock:
            self._runs[run_id] = status
            self._runs.move_to_end(run_id)
            while len(self._runs) > self._limit:
                self._runs.popitem(last=False)

    def seen(self, run_id: int, status: str | None) -> None:
        """A newer status of a run started here (ignored for a run not recorded)."""
        with self._lock:
            if run_id in self._runs:
                self._runs[run_id] = status

    def snapshot(self) -> dict[int, str | None]:
        with self._lock:
            return dict(self._runs)


@dataclass
class Tracked:
    """What the database says: counts, and the status of the given runs found in it."""

    by_status: Counter[str] = field(default_factory=Counter)
    by_state: Counter[str] = field(default_factory=Counter)
    statuses: dict[int, str | None] = field(default_factory=dict)


def _database_url(settings: Settings) -> str | None:
    """``DATABASE_URL``, else the embedded SQLite file if it exists; never creates one."""
    from app.db.session import SQLITE_FILENAME, database_url

    if settings.database_url:
        return database_url(settings)
    path = settings.aiw_data_dir.expanduser().resolve() / SQLITE_FILENAME
    return f"sqlite:///{path}" if path.is_file() else None


def _describe(exc: BaseException, url: str) -> str:
    """One line about a database failure, without the URL's password."""
    from sqlalchemy.engine import make_url

    text = (str(exc).strip().splitlines() or [""])[0][:300]
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - a malformed URL: nothing to hide from it
        password = None
    if password:
        text = text.replace(str(password), "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def tracked_runs(settings: Settings, run_ids: Collection[int]) -> tuple[Tracked | None, str | None]:
    """The ``agent_runs`` counts and the rows among ``run_ids`` (Codegen ids), or why not.

    ``(Tracked, None)``, or ``(None, "the reason")`` when there is no database or it
    cannot be read. One short transaction.
    """
    url = _database_url(settings)
    if url is None:
        return None, (
            "no database: DATABASE_URL is unset and there is no embedded database in "
            "AIW_DATA_DIR (nothing tracked yet)"
        )
    try:
        from sqlalchemy import func, select

        from app.db.agent_run_models import AgentRunRow
        from app.db.session import session_scope

        tracked = Tracked()
        with session_scope(url) as session:
            grouped = session.execute(
                select(AgentRunRow.remote_status, AgentRunRow.state, func.count()).group_by(
                    AgentRunRow.remote_status, AgentRunRow.state
                )
            ).all()
            for remote_status, state, count in grouped:
                tracked.by_status[_key(remote_status)] += int(count)
                tracked.by_state[str(state)] += int(count)
            ids = sorted(run_ids)
            for at in range(0, len(ids), _IN_CHUNK):
                rows = session.execute(
                    select(AgentRunRow.remote_id, AgentRunRow.remote_status).where(
                        AgentRunRow.remote_id.in_(ids[at : at + _IN_CHUNK])
                    )
                ).all()
                for remote_id, remote_status in rows:
                    if remote_id is not None:
                        tracked.statuses[remote_id] = remote_status
        return tracked, None
    except Exception as exc:  # noqa: BLE001 - stats report a broken database, never raise
        return None, f"the database could not be read ({_describe(exc, url)})"


def _success_rate(by_status: Mapping[str, int]) -> float | None:
    ended = sum(n for status, n in by_status.items() if st.is_terminal(status))
    done = sum(n for status, n in by_status.items() if st.is_success(status))
    return done / ended if ended else None


def _section(by_status: Counter[str]) -> dict[str, Any]:
    return {
        "task_count": sum(by_status.values()),
        "runs_by_state": dict(sorted(by_status.items())),
        "task_success_rate": _success_rate(by_status),
    }


def combine(
    local: Mapping[int, str | None], tracked: Tracked | None, tracked_error: str | None
) -> dict[str, Any]:
    """The run part of ``get_enhanced_stats`` (see ``CodegenProvider.get_enhanced_stats``)."""
    local_counts = Counter(_key(status) for status in local.values())
    total = Counter(tracked.by_status if tracked is not None else {})
    for run_id, status in local.items():
        if tracked is None or run_id not in tracked.statuses:
            total[_key(status)] += 1
    tracked_part: dict[str, Any] | None = None
    if tracked is not None:
        tracked_part = {
            **_section(tracked.by_status),
            "by_tracking_state": dict(sorted(tracked.by_state.items())),
        }
    return {
        **_section(total),
        "local": _section(local_counts),
        "tracked": tracked_part,
        "tracked_error": tracked_error,
    }
