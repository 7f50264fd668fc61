"""Long repository analysis: one AI job per symbol, followed to the end, then a report.

    from app.integrations.analyze import analyze
    result = analyze("path/to/repo", "Does this function handle errors?", filter="functions",
                     out_dir="report")
    result.report["totals"]          # symbols, succeeded, failed, tokens, cost
    result.json_path, result.markdown_path

Or from a shell: ``aiw analyze PATH --prompt "..." [--filter functions|classes|files]``.

Steps (``analyze`` runs them all; each is usable alone):

1. ``plan_analysis``: check the input and parse the repository with graph-sitter.
   A path that is not a git repository, a language graph-sitter cannot parse, an
   empty prompt, a filter that matches nothing: one ``AnalysisError`` each, before
   anything is queued.
2. ``queue_analysis``: one ordinary AI request per symbol (``submit_many``), each
   built like ``codebase.ai(prompt, target=symbol)``. Each job's idempotency key is
   a digest of the repository path, the symbol and the request (its system prompt
   holds the symbol's source, so an edited symbol is asked again), the prompt, the
   model and the provider. Running the same analysis again finds the jobs of the
   earlier run in one query and queues only the symbols that have none: an
   interrupted analysis resumes without redoing finished symbols. A symbol whose
   earlier job failed or was cancelled is asked again (``retry_failed``) under the
   key ``<key>:retry<n>``.
3. ``follow``: poll the jobs' statuses (one query per poll) until all have ended,
   calling ``on_progress``. Interrupting it leaves the jobs queued: they go on in the
   workers, and the next run picks them up.
4. ``build_report`` / ``write_report``: ``report.json`` and ``report.md`` with every
   answer and the totals of tokens and cost.

With ``hand_to_agent`` (``aiw analyze --agent``) the whole task goes to one Codegen
agent run instead, followed until it ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.ai.base import AIRequest, AIResponse
from app.core.errors import InvalidRequestError
from app.core.priorities import LOW
from app.db.models import AIRequestRow, JobStatus
from app.db.session import session_scope
from app.integrations.graph_sitter import (
    TAG,
    build_codebase_request,
    git_output,
    graph_sitter_api,
    repository_of,
    request_digest,
    subject_for,
    submit_many,
)

log = logging.getLogger(__name__)

FILTERS = ("functions", "classes", "files")
PARSED_LANGUAGES = ("PYTHON", "TYPESCRIPT")
KEY_PREFIX = "gs:"
MAX_RETRY_ROUNDS = 20  # <key>:retry1 .. :retry20, then a failed symbol stays failed
_CHUNK = 500  # ids / keys per IN (...) query
_FAILED = (JobStatus.FAILED, JobStatus.CANCELLED)

ProgressCallback = Callable[["Progress"], None]


class AnalysisError(InvalidRequestError):
    """The analysis cannot start (bad path, language, filter, prompt). Nothing was queued."""


# --- 1. plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Symbol:
    """One thing to ask about: a function or method, a class, or a file."""

    kind: str  # function | method | class | file
    name: str  # qualified: "Class.method"; a file's path for files
    file: str
    line: int | None
    key: str  # idempotency key of its first job
    target: Any = field(repr=False, compare=False)
    skipped: str | None = None  # why it is not asked (e.g. too long for one request)


@dataclass
class AnalysisPlan:
    repository: str
    prompt: str
    filter: str
    provider: str | None
    model: str | None
    analysis_id: str
    codebase: Any = field(repr=False)
    symbols: list[Symbol]
    commit: str | None = None

    @property
    def tag(self) -> str:
        return f"analysis:{self.analysis_id}"


def git_toplevel(path: Path) -> Path | None:
    """The work tree root that contains ``path``, or None if it is in no git repository."""
    if shutil.which("git") is None:
        raise AnalysisError("git is not installed: graph-sitter parses git repositories")
    top = git_output(path, "rev-parse", "--show-toplevel")
    return Path(top) if top else None


def check_repository(path: str | Path) -> Path:
    """An existing directory inside a git work tree, resolved; else ``AnalysisError``."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise AnalysisError(f"{path}: no such directory")
    if not resolved.is_dir():
        raise AnalysisError(f"{path} is not a directory (give the repository's directory)")
    if git_toplevel(resolved) is None:
        raise AnalysisError(
            f"{path} is not a git repository (graph-sitter parses git repositories: "
            "run `git init` and commit the files first)"
        )
    return resolved


def _extensions(path: Path, limit: int = 5) -> str:
    counts = Counter(
        p.suffix or p.name
        for p in path.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(path).parts
    )
    if not counts:
        return "no files"
    return ", ".join(f"{n} {ext}" for ext, n in counts.most_common(limit))


def open_codebase(path: str | Path) -> Any:
    """Parse the repository with graph-sitter; ``AnalysisError`` when it cannot."""
    resolved = check_repository(path)
    codebase = graph_sitter_api().Codebase(str(resolved))
    language = str(getattr(codebase, "language", "")).upper()
    if language not in PARSED_LANGUAGES:
        raise AnalysisError(
            f"graph-sitter cannot parse the code in {path} (language {language or 'unknown'}; "
            f"files: {_extensions(resolved)}): it parses Python and TypeScript/JavaScript"
        )
    return codebase


def _selected(codebase: Any, kind: str) -> list[tuple[str, str, Any]]:
    """(kind, qualified name, target) for the filter, in file then line order."""
    found: list[tuple[str, str, Any]] = []
    if kind == "functions":
        found += [("function", str(f.name), f) for f in codebase.functions]
        for cls in codebase.classes:
            found += [("method", f"{cls.name}.{m.name}", m) for m in cls.methods]
    elif kind == "classes":
        found += [("class", str(c.name), c) for c in codebase.classes]
    else:
        found += [("file", str(f.filepath), f) for f in codebase.files]

    def order(item: tuple[str, str, Any]) -> tuple[str, int, str]:
        target = item[2]
        row = getattr(getattr(target, "start_point", None), "row", 0)
        return (str(getattr(target, "filepath", "")), row if isinstance(row, int) else 0, item[1])

    return sorted(found, key=order)


def plan_analysis(
    path: str | Path,
    prompt: str,
    *,
    filter: str = "functions",
    provider: str | None = None,
    model: str | None = None,
    codebase: Any = None,
) -> AnalysisPlan:
    """Check everything and parse the repository; queue nothing."""
    from app.ai.factory import provider_names
    from app.config import get_settings

    if not isinstance(prompt, str) or not prompt.strip():
        raise AnalysisError("the prompt is empty")
    if filter not in FILTERS:
        raise AnalysisError(f"unknown filter {filter!r}; one of {', '.join(FILTERS)}")
    if provider is not None and provider not in provider_names():
        raise AnalysisError(
            f"unknown provider {provider!r}; known providers: {', '.join(provider_names())}"
        )
    if codebase is None:
        codebase = open_codebase(path)
    repository = repository_of(codebase)
    selected = _selected(codebase, filter)
    if not selected:
        raise AnalysisError(
            f"no {filter} found in {path} (graph-sitter found {len(codebase.files)} files, "
            f"{len(codebase.functions)} functions, {len(codebase.classes)} classes)"
        )
    limit = get_settings().ai_max_prompt_chars
    analysis_id = request_digest(repository, prompt, filter, model, provider)[:16]
    symbols = []
    for kind, name, target in selected:
        request = build_codebase_request(prompt, target, None, model)
        skipped = None
        try:
            AIRequest.build(
                prompt, system_prompt=request.system_prompt, model=model, max_prompt_chars=limit
            )
        except InvalidRequestError as exc:
            skipped = exc.message
        digest = request_digest(
            repository,
            kind,
            str(target.filepath),
            name,
            request.system_prompt,
            prompt,
            model,
            provider,
        )
        line = getattr(getattr(target, "start_point", None), "row", None)
        symbols.append(
            Symbol(
                kind=kind,
                name=name,
                file=str(target.filepath),
                line=line + 1 if isinstance(line, int) else None,
                key=KEY_PREFIX + digest,
                target=target,
                skipped=skipped,
            )
        )
    return AnalysisPlan(
        repository=repository,
        prompt=prompt,
        filter=filter,
        provider=provider,
        model=model,
        analysis_id=analysis_id,
        codebase=codebase,
        symbols=symbols,
        commit=subject_for(codebase).get("commit"),
    )


# --- 2. queue ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedSymbol:
    symbol: Symbol
    job_id: uuid.UUID | None  # None: skipped
    origin: str  # new | reused | retried | skipped


def _rows_by_key(keys: Sequence[str]) -> dict[str, tuple[uuid.UUID, str]]:
    found: dict[str, tuple[uuid.UUID, str]] = {}
    with session_scope() as session:
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start : start + _CHUNK])
            rows = session.execute(
                select(AIRequestRow.idempotency_key, AIRequestRow.id, AIRequestRow.status).where(
                    AIRequestRow.idempotency_key.in_(chunk)
                )
            )
            for key, job_id, status in rows:
                found[str(key)] = (job_id, str(status))
    return found


def retry_key(key: str, n: int) -> str:
    return key if n == 0 else f"{key}:retry{n}"


def existing_jobs(base_keys: Sequence[str]) -> dict[str, tuple[int, uuid.UUID, str]]:
    """For each base key with a job: (n, job id, status) of its latest job, following
    ``<key>:retry<n>`` while the previous one failed. A few queries in all."""
    latest: dict[str, tuple[int, uuid.UUID, str]] = {}
    pending = list(base_keys)
    for n in range(MAX_RETRY_ROUNDS + 1):
        if not pending:
            break
        rows = _rows_by_key([retry_key(k, n) for k in pending])
        following = []
        for base in pending:
            row = rows.get(retry_key(base, n))
            if row is None:
                continue
            latest[base] = (n, row[0], row[1])
            if JobStatus(row[1]) in _FAILED:
                following.append(base)
        pending = following
    return latest


def queue_analysis(
    plan: AnalysisPlan, *, retry_failed: bool = True, priority: str = LOW
) -> list[QueuedSymbol]:
    """Queue the symbols that have no job yet (or whose job failed); reuse the others.
    At ``priority`` low by default: a bulk analysis never holds back anyone's job."""
    asked = [s for s in plan.symbols if s.skipped is None]
    latest = existing_jobs([s.key for s in asked])
    to_submit: list[tuple[Symbol, str, str]] = []  # symbol, key, origin
    result: dict[str, QueuedSymbol] = {}
    for symbol in asked:
        found = latest.get(symbol.key)
        if found is None:
            to_submit.append((symbol, symbol.key, "new"))
            continue
        n, job_id, status = found
        if JobStatus(status) in _FAILED and retry_failed and n < MAX_RETRY_ROUNDS:
            to_submit.append((symbol, retry_key(symbol.key, n + 1), "retried"))
        else:
            result[symbol.key] = QueuedSymbol(symbol, job_id, "reused")
    if to_submit:
        handles = submit_many(
            plan.codebase,
            plan.prompt,
            [s.target for s, _, _ in to_submit],
            model=plan.model,
            provider=plan.provider,
            idempotency_keys=[key for _, key, _ in to_submit],
            tags=[TAG, plan.tag],
            subject={"analysis": plan.analysis_id},
            priority=priority,
        )
        for (symbol, _, origin), handle in zip(to_submit, handles, strict=True):
            result[symbol.key] = QueuedSymbol(symbol, handle.id, origin)
    return [
        result[s.key] if s.skipped is None else QueuedSymbol(s, None, "skipped")
        for s in plan.symbols
    ]


# --- 3. follow -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    total: int
    finished: int
    by_status: dict[str, int]
    elapsed: float
    changed: bool  # something finished since the last call


def statuses(job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    ids = list(job_ids)
    found: dict[uuid.UUID, str] = {}
    with session_scope() as session:
        for start in range(0, len(ids), _CHUNK):
            rows = session.execute(
                select(AIRequestRow.id, AIRequestRow.status).where(
                    AIRequestRow.id.in_(ids[start : start + _CHUNK])
                )
            )
            found.update({job_id: str(status) for job_id, status in rows})
    return found


def follow(
    job_ids: Sequence[uuid.UUID],
    *,
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
    poll_interval: float = 0.5,
    max_poll_interval: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[uuid.UUID, str]:
    """Poll until every job has ended (or ``timeout`` seconds); the last statuses."""
    started = time.monotonic()
    delay = poll_interval
    finished_before = -1
    while True:
        current = statuses(job_ids)
        counts = Counter(current.values())
        finished = sum(n for s, n in counts.items() if JobStatus(s).is_terminal)
        changed = finished != finished_before
        finished_before = finished
        if on_progress is not None:
            on_progress(
                Progress(len(job_ids), finished, dict(counts), time.monotonic() - started, changed)
            )
        if finished >= len(job_ids):
            return current
        if timeout is not None and time.monotonic() - started >= timeout:
            return current
        delay = poll_interval if changed else min(max_poll_interval, delay * 1.5)
        sleep(delay)


# --- 4. report -----------------------------------------------------------------------------


def _jobs(job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    from app.jobs import Job

    jobs: dict[uuid.UUID, Job] = {}
    with session_scope() as session:
        for start in range(0, len(job_ids), _CHUNK):
            rows = session.scalars(
                select(AIRequestRow).where(AIRequestRow.id.in_(job_ids[start : start + _CHUNK]))
            )
            jobs.update({row.id: Job.model_validate(row) for row in rows})
    return jobs


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_report(plan: AnalysisPlan, queued: Sequence[QueuedSymbol]) -> dict[str, Any]:
    """Every symbol with its job, status and answer, and the totals (from the database)."""
    jobs = _jobs([q.job_id for q in queued if q.job_id is not None])
    entries: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    cost = 0.0
    for q in queued:
        s = q.symbol
        entry: dict[str, Any] = {
            "kind": s.kind,
            "name": s.name,
            "file": s.file,
            "line": s.line,
            "job_id": str(q.job_id) if q.job_id else None,
            "origin": q.origin,
            "status": "skipped",
            "provider": None,
            "model": None,
            "answer": None,
            "error": s.skipped,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": None,
        }
        job = jobs.get(q.job_id) if q.job_id else None
        if job is not None:
            entry["status"] = str(job.status)
            entry["provider"] = job.provider_used
            entry["model"] = job.model
            if job.error_type:
                entry["error"] = f"{job.error_type}: {job.error_message}"
            response: AIResponse | None = job.response()
            if response is not None:
                entry["answer"] = response.content
                entry["prompt_tokens"] = response.usage.prompt_tokens
                entry["completion_tokens"] = response.usage.completion_tokens
                entry["cost_usd"] = response.cost_usd
                if response.cost_usd is None:
                    totals["cost_unknown"] += 1
                else:
                    cost += response.cost_usd
        totals[entry["status"]] += 1
        totals[q.origin] += 1
        totals["prompt_tokens"] += entry["prompt_tokens"]
        totals["completion_tokens"] += entry["completion_tokens"]
        entries.append(entry)
    pending = sum(
        1 for e in entries if e["status"] not in ("succeeded", "failed", "cancelled", "skipped")
    )
    return {
        "analysis_id": plan.analysis_id,
        "repository": plan.repository,
        "repository_name": Path(plan.repository).name,
        "commit": plan.commit,
        "prompt": plan.prompt,
        "filter": plan.filter,
        "provider": plan.provider,
        "model": plan.model,
        "generated_at": _now(),
        "complete": pending == 0,
        "totals": {
            "symbols": len(entries),
            "succeeded": totals["succeeded"],
            "failed": totals["failed"] + totals["cancelled"],
            "pending": pending,
            "skipped": totals["skipped"],
            "new_jobs": totals["new"],
            "reused_jobs": totals["reused"],
            "retried_jobs": totals["retried"],
            "prompt_tokens": totals["prompt_tokens"],
            "completion_tokens": totals["completion_tokens"],
            "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"],
            "cost_usd": round(cost, 8),
            "answers_without_price": totals["cost_unknown"],
        },
        "symbols": entries,
    }


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


def render_markdown(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [
        f"# Analysis of {report['repository_name']}",
        "",
        f"- repository: `{report['repository']}`"
        + (f" at `{report['commit'][:12]}`" if report.get("commit") else ""),
        f"- prompt: {report['prompt']}",
        f"- filter: {report['filter']}; provider: {report['provider'] or 'automatic'}; "
        f"model: {report['model'] or 'default'}",
        f"- generated: {report['generated_at']}"
        + ("" if report["complete"] else f" (incomplete: {t['pending']} still running)"),
        "",
        "| symbols | succeeded | failed | pending | skipped | tokens | cost (USD) |",
        "|---|---|---|---|---|---|---|",
        f"| {t['symbols']} | {t['succeeded']} | {t['failed']} | {t['pending']} | "
        f"{t['skipped']} | {t['total_tokens']} | {t['cost_usd']:.6f} |",
        "",
    ]
    for e in report["symbols"]:
        where = f"{e['file']}:{e['line']}" if e["line"] else e["file"]
        lines += [f"## {e['kind']} `{e['name']}`", "", f"`{where}` · {e['status']}"]
        if e["provider"]:
            lines[-1] += f" · {e['provider']} {e['model'] or ''}".rstrip()
        lines.append("")
        if e["answer"] is not None:
            lines += [_fence(e["answer"]), ""]
        elif e["error"]:
            lines += [f"> {e['error']}", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out_dir`` (made if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    md_path = out / "report.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    md_path.write_text(render_markdown(report), "utf-8")
    return json_path, md_path


def default_out_dir(plan: AnalysisPlan) -> Path:
    return Path("aiw-analysis") / f"{Path(plan.repository).name}-{plan.analysis_id[:8]}"


# --- all together ------------------------------------------------------------------------


@dataclass
class AnalysisResult:
    plan: AnalysisPlan
    queued: list[QueuedSymbol]
    report: dict[str, Any]
    json_path: Path
    markdown_path: Path


def analyze(
    path: str | Path,
    prompt: str,
    *,
    filter: str = "functions",
    provider: str | None = None,
    model: str | None = None,
    out_dir: str | Path | None = None,
    timeout: float | None = None,
    retry_failed: bool = True,
    on_progress: ProgressCallback | None = None,
    priority: str = LOW,
) -> AnalysisResult:
    """Plan, queue, follow and report. After ``timeout`` seconds the report is written
    with what has finished (``report["complete"]`` is False); running again resumes."""
    plan = plan_analysis(path, prompt, filter=filter, provider=provider, model=model)
    queued = queue_analysis(plan, retry_failed=retry_failed, priority=priority)
    ids = [q.job_id for q in queued if q.job_id is not None]
    follow(ids, on_progress=on_progress, timeout=timeout)
    report = build_report(plan, queued)
    json_path, md_path = write_report(report, out_dir or default_out_dir(plan))
    return AnalysisResult(plan, queued, report, json_path, md_path)


# --- the whole task to one agent run --------------------------------------------------------


AGENT_SYMBOL_LIST_MAX = 200


def agent_prompt(plan: AnalysisPlan, remote: str | None) -> str:
    """The task for a Codegen agent: the repository, the prompt, the symbols to cover."""
    where = remote or plan.repository
    lines = [
        f"Repository: {Path(plan.repository).name} ({where})"
        + (f" at commit {plan.commit}" if plan.commit else ""),
        "",
        f"For each of the {len(plan.symbols)} {plan.filter} listed below, answer: {plan.prompt}",
        "",
        "Write one section per item, headed by its file and name.",
        "",
    ]
    shown = plan.symbols[:AGENT_SYMBOL_LIST_MAX]
    lines += [f"- {s.file}:{s.line or 1} {s.kind} {s.name}" for s in shown]
    if len(plan.symbols) > len(shown):
        lines.append(f"- ... and {len(plan.symbols) - len(shown)} more of the same kind")
    return "\n".join(lines)


@dataclass
class AgentHandOff:
    """The tracked Codegen agent run that carries the whole analysis."""

    plan: AnalysisPlan
    run_id: int
    prompt: str
    reused: bool  # True: a run of an earlier, identical hand-off, followed again


def agent_tag(plan: AnalysisPlan, prompt: str, repo_id: int | None, model: str | None) -> str:
    return "gs-agent:" + request_digest(plan.repository, prompt, repo_id, model)[:24]


def hand_to_agent(
    plan: AnalysisPlan, *, repo_id: int | None = None, model: str | None = None
) -> AgentHandOff:
    """Start one Codegen agent run for the whole task (``app.jobs.submit_agent_run``: the
    workers create it and the beat follows it, with status events, webhooks and
    artifacts). The same hand-off again follows the earlier run instead of starting a
    second one, unless that run failed (then a new one starts)."""
    from app.codegen import is_success
    from app.jobs.agent_runs import AgentRunState, list_agent_runs, submit_agent_run

    prompt = agent_prompt(plan, git_output(plan.repository, "remote", "get-url", "origin"))
    tag = agent_tag(plan, prompt, repo_id, model)
    for record in list_agent_runs(tag=tag, limit=20):
        ended_badly = record.state in (AgentRunState.STUCK, AgentRunState.CREATE_FAILED) or (
            record.state == AgentRunState.FINISHED and not is_success(record.remote_status)
        )
        if not ended_badly:
            return AgentHandOff(plan, record.id, prompt, reused=True)
    handle = submit_agent_run(
        prompt,
        repo_id=repo_id,
        model=model,
        metadata={
            "source": "aiw analyze",
            "analysis": plan.analysis_id,
            "repository": plan.repository,
            "commit": plan.commit,
        },
        tags=[TAG, plan.tag, tag],
    )
    return AgentHandOff(plan, handle.id, prompt, reused=False)


def agent_report(hand_off: AgentHandOff) -> dict[str, Any]:
    """The run as a report: status, result, web URL, pull requests."""
    from app.codegen import is_success
    from app.jobs.agent_runs import AgentRunState, get_agent_run
    from app.jobs.agent_runs.service import get_agent_run_artifacts

    record = get_agent_run(hand_off.run_id)
    pulls = [a.data for a in get_agent_run_artifacts(record.id) if a.kind == "pull_request"]
    plan = hand_off.plan
    succeeded = record.state == AgentRunState.FINISHED and is_success(record.remote_status)
    error = None
    if record.error_type:
        error = f"{record.error_type}: {record.error_message}"
    elif record.is_finished and not succeeded:
        error = f"the agent run ended {record.remote_status or record.state}"
    return {
        "analysis_id": plan.analysis_id,
        "mode": "agent",
        "repository": plan.repository,
        "repository_name": Path(plan.repository).name,
        "commit": plan.commit,
        "prompt": plan.prompt,
        "filter": plan.filter,
        "provider": "codegen",
        "model": record.model,
        "generated_at": _now(),
        "complete": record.is_finished,
        "agent_run_id": record.id,
        "remote_id": record.remote_id,
        "state": str(record.state),
        "status": record.remote_status,
        "reused": hand_off.reused,
        "web_url": record.web_url,
        "pull_requests": pulls,
        "answer": record.result or record.summary,
        "summary": record.summary,
        "error": error,
        "totals": {
            "symbols": len(plan.symbols),
            "succeeded": 1 if succeeded else 0,
            "failed": 1 if record.is_finished and not succeeded else 0,
            "pending": 0 if record.is_finished else 1,
            "skipped": 0,
            "prompt_tokens": 0,  # Codegen reports no usage and no price
            "completion_tokens": 0,
            "total_tokens": 0,
            "cost_usd": None,
        },
        "symbols": [],
    }


def render_agent_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Agent analysis of {report['repository_name']}",
        "",
        f"- repository: `{report['repository']}`",
        f"- prompt: {report['prompt']}",
        f"- agent run: {report['agent_run_id']} (Codegen {report['remote_id']}) · "
        f"{report['status'] or report['state']}",
    ]
    if report.get("web_url"):
        lines.append(f"- web: {report['web_url']}")
    for pr in report.get("pull_requests") or []:
        lines.append(f"- pull request: {pr.get('url') or pr}")
    lines.append("")
    if report.get("answer") is not None:
        lines += [report["answer"], ""]
    elif report.get("error"):
        lines += [f"> {report['error']}", ""]
    return "\n".join(lines)


def write_agent_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    md_path = out / "report.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    md_path.write_text(render_agent_markdown(report), "utf-8")
    return json_path, md_path
