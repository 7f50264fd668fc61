"""From a request to the input of a new agent run: the pure part, then the lookup.

Two steps, so every path (``CodegenProvider``, a queued AI request answered by
Codegen, ``submit_agent_run``) builds the same run from the same options:

1. ``build_run_input(prompt, system_prompt, options, model=...)`` checks every option
   and composes the creation input (``RunInput``): the prompt text (the system prompt
   first, under a heading, and a line naming the branch), the metadata (``tags``,
   ``repository``, ``branch``, ``priority`` added), ``repo_id`` or the ``repository``
   still to resolve, images, model and agent type. No network: call it where a bad
   value must be refused before anything is written or queued.
2. ``resolve_run_input(run_input, lookup)`` turns ``repository="owner/repo"`` into
   its ``repo_id`` through ``lookup.find_repo_id`` (a ``CodegenClient``, or a
   ``RepoResolver`` over a budgeted page reader), before any run is created: an
   unknown name, or a ``repo_id`` that names another repository, is
   ``InvalidRequestError``.

Then ``client.create_run(run_input.prompt, **run_input.create_kwargs())`` (or
``Agent.run`` with the same arguments).

The options (``OPTIONS``): ``repo_id`` (int), ``repository`` (``owner/repo``),
``branch`` (a git branch name), ``priority`` (``high`` | ``normal`` | ``low``),
``metadata`` (a JSON object stored with the run), ``tags`` (strings, merged into
``metadata["tags"]``), ``images`` (base64 data URIs), ``agent_type`` (``codegen`` |
``claude_code``). Codegen has no field for a branch or a priority: the branch is
told in the prompt, and ``repository``, ``branch`` and ``priority`` are kept in the
run's metadata (a metadata key that disagrees with the option is refused). The chat
options ``tools``, ``tool_choice`` and ``parallel_tool_calls`` are accepted and
ignored (an agent answers in text). ``model`` ``"codegen-agent"`` (``DEFAULT_MODEL``,
the organization's default) is not sent.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.codegen.checks import (
    check_agent_type,
    check_id,
    check_images,
    check_metadata,
    check_model,
    check_prompt,
)
from app.codegen.repos import RepoLookup, check_repository
from app.core.errors import InvalidRequestError

#: The model name of an answer when no model was asked for (the organization's default).
DEFAULT_MODEL = "codegen-agent"
#: The options ``build_run_input`` takes.
OPTIONS: frozenset[str] = frozenset(
    {"repo_id", "repository", "branch", "priority", "metadata", "tags", "images", "agent_type"}
)
#: Chat options accepted and ignored (an agent has no function calling).
IGNORED_OPTIONS: frozenset[str] = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
#: ``priority`` values, kept in ``metadata["priority"]``.
PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
MAX_BRANCH_LENGTH = 255
# What git refuses in a ref name (git check-ref-format): controls, space, ~ ^ : ? * [ \
_BAD_BRANCH_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


@dataclass(frozen=True)
class RunInput:
    """The creation input of one agent run (``CreateAgentRunInput`` plus what to resolve).

    ``repository`` is the ``owner/repo`` asked for; ``repo_resolved`` says whether
    ``repo_id`` was checked against it (``resolve_run_input``).
    """

    prompt: str
    metadata: dict[str, Any] | None = None
    repo_id: int | None = None
    repository: str | None = None
    images: list[str] | None = None
    model: str | None = None
    agent_type: str | None = None
    repo_resolved: bool = False

    @property
    def needs_resolution(self) -> bool:
        """True while ``repository`` is not yet resolved to its ``repo_id``."""
        return self.repository is not None and not self.repo_resolved

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``CodegenClient.create_run`` / ``Agent.run`` (not the prompt)."""
        if self.needs_resolution:
            raise InvalidRequestError(
                f"repository {self.repository!r} is not resolved to a repo_id yet "
                "(resolve_run_input first)",
                provider_name="codegen",
            )
        return {
            "images": self.images,
            "metadata": self.metadata,
            "repo_id": self.repo_id,
            "model": self.model,
            "agent_type": self.agent_type,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (to store or send the input)."""
        return dataclasses.asdict(self)


def check_branch(value: object) -> str:
    """``value`` as a git branch name (git's basic rules), else ``InvalidRequestError``."""
    if not isinstance(value, str):
        raise InvalidRequestError(
            f"branch must be a string, got {type(value).__name__}", provider_name="codegen"
        )
    if not value:
        raise InvalidRequestError("branch is empty", provider_name="codegen")
    problem = _branch_problem(value)
    if problem:
        raise InvalidRequestError(
            f"branch {value[:80]!r} is not a valid git branch name: {problem}",
            provider_name="codegen",
        )
    return value


def _branch_problem(name: str) -> str | None:
    if len(name) > MAX_BRANCH_LENGTH:
        return f"{len(name)} characters, over {MAX_BRANCH_LENGTH}"
    bad = _BAD_BRANCH_CHARS.search(name)
    if bad:
        return f"it contains {bad.group()!r} (no spaces, controls or ~ ^ : ? * [ \\)"
    if name == "@" or ".." in name or "@{" in name or "//" in name:
        return "it is '@' or contains '..', '@{' or '//'"
    if name.startswith(("-", "/")) or name.endswith(("/", ".")):
        return "it starts with '-' or '/', or ends with '/' or '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "a part starts with '.' or ends with '.lock'"
    return None


def check_priority(value: object) -> str:
    """``value`` as a priority (``PRIORITIES``), else ``InvalidRequestError``."""
    if not isinstance(value, str) or value not in PRIORITIES:
        raise InvalidRequestError(
            f"priority must be one of {', '.join(map(repr, PRIORITIES))}, got {value!r}",
            provider_name="codegen",
        )
    return value


def compose_prompt(
    prompt: str,
    system_prompt: str | None,
    *,
    repository: str | None = None,
    branch: str | None = None,
) -> str:
    """One prompt for Codegen: the system prompt first, under its own heading.

    With a ``branch``, the task starts with a line naming it (and the repository):
    "Work on the branch `main` of owner/repo."
    """
    task = prompt
    if branch:
        where = f" of {repository}" if repository else ""
        task = f"Work on the branch `{branch}`{where}.\n\n{prompt}"
    if not system_prompt or not system_prompt.strip():
        return task
    return f"## Instructions\n\n{system_prompt.strip()}\n\n## Task\n\n{task}"


def build_run_input(
    prompt: str,
    system_prompt: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
) -> RunInput:
    """Check ``options`` (see the module docstring) and compose the run's input.

    No network call. ``InvalidRequestError`` naming the first bad value: an unknown
    option, a wrong type, a malformed repository or branch name, an unknown priority,
    metadata that is not a JSON object or disagrees with ``repository``/``branch``/
    ``priority``. ``repository`` is left for ``resolve_run_input``.
    """
    check_prompt(prompt)
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InvalidRequestError("system_prompt must be a string or None")
    given = {k: v for k, v in (options or {}).items() if k not in IGNORED_OPTIONS}
    unknown = sorted(set(given) - OPTIONS)
    if unknown:
        raise InvalidRequestError(
            f"codegen does not take option(s) {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(OPTIONS))}",
            provider_name="codegen",
        )
    metadata = check_metadata(given.get("metadata"))
    tags = given.get("tags")
    if tags is not None:
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequestError("tags must be a list of strings", provider_name="codegen")
        metadata = dict(metadata or {})
        earlier = metadata.get("tags")
        merged = list(earlier) if isinstance(earlier, list) else []
        metadata["tags"] = list(dict.fromkeys([*merged, *tags]))
    repo_id = given.get("repo_id")
    if repo_id is not None:
        repo_id = check_id("repo_id", repo_id)
    repository = given.get("repository")
    if repository is not None:
        repository = check_repository(repository)
    branch = None if given.get("branch") is None else check_branch(given["branch"])
    priority = None if given.get("priority") is None else check_priority(given["priority"])
    for key, value in (("repository", repository), ("branch", branch), ("priority", priority)):
        if value is None:
            continue
        metadata = dict(metadata or {})
        if key in metadata and metadata[key] != value:
            raise InvalidRequestError(
                f"metadata[{key!r}] is {metadata[key]!r} but {key} is {value!r}: give one",
                provider_name="codegen",
            )
        metadata[key] = value
    agent_type = given.get("agent_type")
    return RunInput(
        prompt=compose_prompt(prompt, system_prompt, repository=repository, branch=branch),
        metadata=metadata,
        repo_id=repo_id,
        repository=repository,
        images=check_images(given.get("images")),
        model=None if model is None or model == DEFAULT_MODEL else check_model(model),
        agent_type=None if agent_type is None else check_agent_type(agent_type),
    )


def resolve_run_input(run_input: RunInput, lookup: RepoLookup) -> RunInput:
    """``run_input`` with ``repository`` resolved to its ``repo_id`` (``lookup``'s requests).

    Nothing to do without a ``repository`` (no request). ``InvalidRequestError`` when
    the organization has no such repository, or when ``repo_id`` was given too and
    names another one.
    """
    if not run_input.needs_resolution:
        return run_input
    assert run_input.repository is not None
    found = lookup.find_repo_id(run_input.repository)
    if run_input.repo_id is not None and run_input.repo_id != found:
        raise InvalidRequestError(
            f"repository {run_input.repository!r} is repo_id {found} at Codegen, but "
            f"repo_id {run_input.repo_id} was given: give one of them",
            provider_name="codegen",
        )
    return dataclasses.replace(run_input, repo_id=found, repo_resolved=True)
