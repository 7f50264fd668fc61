"""Repository names to Codegen ``repo_id``: ``RepoResolver`` and the name check.

Codegen's ``POST .../agent/run`` takes a ``repo_id``; people know a repository as
``owner/repo``. ``RepoResolver.find_repo_id("owner/repo")`` reads the organization's
repositories (``GET /v1/organizations/{org_id}/repos``, 100 a page, paid from the
budget like any standard request) and keeps the name -> id map for ``ttl`` seconds
(5 minutes), so a burst of runs on the same repository costs one listing:

    client = CodegenClient(org_id=42, token="...")
    client.find_repo_id("octo/shop")           # 7 (one resolver per client, cached)

    resolver = RepoResolver(gateway_list_page)  # any (skip, limit) -> RepoPage callable

Names are compared as GitHub does: exactly first, then ignoring case. A name the
organization does not have raises ``InvalidRequestError`` naming it and saying how
many repositories the organization has; before saying so, a map older than
``MISS_REFRESH`` seconds is read again (a repository added a moment ago is found).
``check_repository`` checks the shape of a name without any request.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from app.core.errors import InvalidRequestError

if TYPE_CHECKING:
    from app.codegen.models import Repo, RepoPage

#: Seconds a name -> id map stays fresh.
DEFAULT_TTL = 300.0
#: A name not in a map older than this (seconds) makes the map be read again once.
MISS_REFRESH = 30.0
#: GitHub: owner up to 39 characters, repository up to 100.
MAX_REPOSITORY_LENGTH = 140
_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

#: ``fetch_page(skip, limit)``: one page of the organization's repositories.
FetchPage = Callable[[int, int], "RepoPage"]


class RepoLookup(Protocol):
    """Anything that turns ``owner/repo`` into a Codegen ``repo_id`` (a client, a resolver)."""

    def find_repo_id(self, full_name: str) -> int: ...


def check_repository(value: object) -> str:
    """``value`` as a repository full name (``owner/repo``), else ``InvalidRequestError``."""
    if not isinstance(value, str):
        raise InvalidRequestError(
            f"repository must be a string 'owner/repo', got {type(value).__name__}",
            provider_name="codegen",
        )
    name = value.strip()
    if not name:
        raise InvalidRequestError("repository is empty", provider_name="codegen")
    if len(name) > MAX_REPOSITORY_LENGTH:
        raise InvalidRequestError(
            f"repository is {len(name)} characters, over {MAX_REPOSITORY_LENGTH}",
            provider_name="codegen",
        )
    owner, _, repo = name.partition("/")
    if not _NAME.match(name) or repo in (".", "..") or owner in (".", ".."):
        raise InvalidRequestError(
            f"repository must be a GitHub full name 'owner/repo' (letters, digits, '-', "
            f"'_', '.'), got {value!r}",
            provider_name="codegen",
        )
    return name


class RepoResolver:
    """The organization's ``owner/repo`` -> ``repo_id`` map, cached (thread-safe).

    ``fetch_page(skip, limit)`` reads one page (``CodegenClient.list_repos``, or a
    budgeted equivalent). ``clock`` is injectable for tests.
    """

    PAGE_SIZE = 100

    def __init__(
        self,
        fetch_page: FetchPage,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch_page = fetch_page
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._repos: list[Repo] | None = None
        self._by_name: dict[str, int] = {}
        self._by_folded: dict[str, int] = {}
        self._loaded_at = 0.0

    def find_repo_id(self, full_name: str) -> int:
        """The ``repo_id`` of ``full_name``; ``InvalidRequestError`` if the org has none."""
        name = check_repository(full_name)
        with self._lock:
            if self._stale(self.ttl):
                self._load()
            found = self._match(name)
            if found is None and self._stale(MISS_REFRESH):
                self._load()
                found = self._match(name)
            if found is not None:
                return found
            count = len(self._repos or [])
        listed = "no repositories" if count == 0 else f"{count} repositories"
        raise InvalidRequestError(
            f"repository {name!r} is not one of the Codegen organization's ({listed}; "
            "names are GitHub's 'owner/repo')",
            provider_name="codegen",
        )

    def repos(self) -> list[Repo]:
        """Every repository of the organization (from the cache while it is fresh)."""
        with self._lock:
            if self._stale(self.ttl):
                self._load()
            return list(self._repos or [])

    def invalidate(self) -> None:
        """Forget the map: the next lookup reads the repositories again."""
        with self._lock:
            self._repos = None

    def _stale(self, age: float) -> bool:
        return self._repos is None or self._clock() - self._loaded_at >= age

    def _match(self, name: str) -> int | None:
        found = self._by_name.get(name)
        return found if found is not None else self._by_folded.get(name.casefold())

    def _load(self) -> None:
        repos: list[Repo] = []
        seen: set[int] = set()
        skip = 0
        while True:
            page = self._fetch_page(skip, self.PAGE_SIZE)
            for repo in page.items:
                if repo.id not in seen:
                    seen.add(repo.id)
                    repos.append(repo)
            skip += len(page.items)
            if len(page.items) < self.PAGE_SIZE or skip >= page.total:
                break
        self._repos = repos
        self._by_name = {repo.full_name: repo.id for repo in repos}
        self._by_folded = {}
        for repo in repos:
            self._by_folded.setdefault(repo.full_name.casefold(), repo.id)
        self._loaded_at = self._clock()

    def __repr__(self) -> str:
        count = "?" if self._repos is None else len(self._repos)
        return f"<RepoResolver repos={count} ttl={self.ttl:g}>"
