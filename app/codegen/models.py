"""The Codegen API's answers as pydantic models (schemas of the OpenAPI document).

Every model tolerates fields the document does not list (``extra="allow"``: they are
kept, reachable through ``model_extra``), so a new server field never breaks a client.
``status`` is kept verbatim as a string; see ``app.codegen.status`` for its meaning.
Timestamps stay strings, as the document types them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.codegen import status as st


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class PullRequest(_Model):
    """``GithubPullRequestResponse``: a pull request the agent opened."""

    id: int
    title: str | None = None
    url: str | None = None
    created_at: str | None = None
    head_branch_name: str | None = None


class _RunFields(_Model):
    """The fields both run answers share."""

    id: int
    organization_id: int
    status: str | None = None
    created_at: str | None = None
    web_url: str | None = None
    result: str | None = None
    metadata: dict[str, Any] | None = None


class AgentRun(_RunFields):
    """``AgentRunResponse``: one agent run as the API last reported it."""

    summary: str | None = None
    source_type: str | None = None
    github_pull_requests: list[PullRequest] = Field(default_factory=list)

    @field_validator("github_pull_requests", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value

    @property
    def is_terminal(self) -> bool:
        return st.is_terminal(self.status)

    @property
    def is_success(self) -> bool:
        return st.is_success(self.status)


class AgentRunPage(_Model):
    """``Page[AgentRunResponse]``: one page of ``GET .../agent/runs`` (newest first)."""

    items: list[AgentRun]
    total: int
    page: int
    size: int
    pages: int


class AgentRunLog(_Model):
    """``AgentRunLogResponse``: one step of the agent (a tool call, a thought, ...)."""

    agent_run_id: int
    created_at: str | None = None
    tool_name: str | None = None
    message_type: str | None = None
    thought: str | None = None
    observation: dict[str, Any] | str | None = None
    tool_input: dict[str, Any] | None = None
    tool_output: dict[str, Any] | None = None


class AgentRunLogs(_RunFields):
    """``AgentRunWithLogsResponse``: the run's main fields plus one page of its logs.

    The document gives this answer no ``summary``, ``source_type`` nor pull requests.
    """

    logs: list[AgentRunLog]
    total_logs: int | None = None
    page: int | None = None
    size: int | None = None
    pages: int | None = None


class Repo(_Model):
    """``RepoResponse``: a repository of the organization.

    ``full_name`` is GitHub's ``owner/repo``; ``id`` is what ``repo_id`` of a new run
    takes. The document marks every field required; only the three that matter here
    are, so a sparser server answer still parses.
    """

    id: int
    name: str
    full_name: str
    description: str | None = None
    github_id: str | None = None
    organization_id: int | None = None
    visibility: str | None = None
    archived: bool | None = None
    setup_status: str | None = None
    language: str | None = None


class RepoPage(_Model):
    """``Page[RepoResponse]``: one page of ``GET .../repos``."""

    items: list[Repo]
    total: int
    page: int
    size: int
    pages: int
