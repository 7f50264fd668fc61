"""Repositories: ``list_repos`` / ``iter_repos``, the fake's endpoint, and ``owner/repo`` ->
``repo_id`` (``RepoResolver``: cached, exact then case-insensitive, clear refusals)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from app.codegen import CodegenClient, Repo, RepoPage, RepoResolver, check_repository
from app.codegen.repos import MISS_REFRESH
from app.core.errors import InvalidRequestError, ProviderServerError
from app.sandbox.base import Fault
from app.sandbox.codegen_server import DEFAULT_REPOS, FakeCodegenServer
from tests.plugins.codegen_fake import ManualClock

REPO_FIELDS = {
    "id", "name", "full_name", "description", "github_id", "organization_id", "visibility",
    "archived", "setup_status", "language",
}


@pytest.fixture
def repos_fake() -> Iterator[FakeCodegenServer]:
    srv = FakeCodegenServer(repos=["octo/shop", "octo/Docs", "acme/api"]).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(repos_fake: FakeCodegenServer) -> Iterator[CodegenClient]:
    with CodegenClient(repos_fake.org_id, repos_fake.token, repos_fake.url, timeout=2) as c:
        yield c


def listings(srv: FakeCodegenServer) -> int:
    return srv.request_count("/repos", method="GET")


# --- the fake's endpoint (raw HTTP) ---------------------------------------------------------


def raw(srv: FakeCodegenServer, **params: Any) -> requests.Response:
    return requests.get(
        f"{srv.url}/v1/organizations/{srv.org_id}/repos",
        params=params,
        headers={"Authorization": f"Bearer {srv.token}"},
        timeout=5,
    )


def test_fake_repos_endpoint_answers_a_page_of_repo_responses() -> None:
    with FakeCodegenServer() as srv:
        body = raw(srv).json()
        assert [item["full_name"] for item in body["items"]] == list(DEFAULT_REPOS)
        assert {"items", "total", "page", "size", "pages"} == set(body)
        assert set(body["items"][0]) == REPO_FIELDS
        assert body["items"][0]["organization_id"] == srv.org_id
        rid = srv.add_repo("octo/new", archived=True)
        assert rid == 3
        newest = raw(srv).json()["items"][-1]
        assert newest["full_name"] == "octo/new" and newest["archived"] is True
        page = raw(srv, skip=1, limit=1).json()
        assert [item["id"] for item in page["items"]] == [2]
        assert (page["total"], page["page"], page["size"], page["pages"]) == (3, 2, 1, 3)
        srv.remove_repo(rid)
        assert raw(srv).json()["total"] == 2
        with pytest.raises(ValueError):
            srv.add_repo("no-slash")


@pytest.mark.parametrize("limit", ["0", "101", "x"])
def test_fake_repos_limit_outside_1_to_100_is_422(limit: str) -> None:
    with FakeCodegenServer() as srv:
        answer = raw(srv, limit=limit)
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["query", "limit"]


def test_fake_repos_needs_the_token_and_counts_against_the_standard_limit() -> None:
    with FakeCodegenServer(standard_limit=(3, 30.0)) as srv:
        denied = requests.get(f"{srv.url}/v1/organizations/{srv.org_id}/repos", timeout=5)
        assert denied.status_code == 401
        assert [raw(srv).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert srv.rate_limited_count == 1


# --- the client -------------------------------------------------------------------------------


def test_list_and_iter_repos(client: CodegenClient, repos_fake: FakeCodegenServer) -> None:
    page = client.list_repos(limit=2)
    assert isinstance(page, RepoPage) and page.total == 3
    assert [repo.full_name for repo in page.items] == ["octo/shop", "octo/Docs"]
    assert isinstance(page.items[0], Repo) and page.items[0].setup_status == "COMPLETE"
    for n in range(4, 8):
        repos_fake.add_repo(f"bulk/r{n}")
    assert [repo.id for repo in client.iter_repos(page_size=2)] == list(range(1, 8))
    assert repos_fake.requests[-1].query == {"skip": ["6"], "limit": ["2"]}
    with pytest.raises(InvalidRequestError):
        client.list_repos(limit=101)
    with pytest.raises(InvalidRequestError):
        client.iter_repos(page_size=0)


def test_find_repo_id_is_cached_per_client(
    client: CodegenClient, repos_fake: FakeCodegenServer
) -> None:
    assert client.find_repo_id("acme/api") == 3
    assert client.find_repo_id("octo/shop") == 1
    assert client.find_repo_id("OCTO/docs") == 2  # GitHub names ignore case
    assert listings(repos_fake) == 1
    assert client.repo_resolver is client.repo_resolver


def test_an_unknown_repository_names_itself_and_the_count(
    client: CodegenClient, repos_fake: FakeCodegenServer
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.find_repo_id("octo/missing")
    message = str(info.value)
    assert "'octo/missing'" in message and "3 repositories" in message
    assert "owner/repo" in message
    with FakeCodegenServer(repos=[]) as empty, CodegenClient(
        empty.org_id, empty.token, empty.url
    ) as nothing, pytest.raises(InvalidRequestError, match="no repositories"):
        nothing.find_repo_id("octo/shop")


@pytest.mark.parametrize(
    "bad", ["", "   ", "shop", "octo/", "/shop", "octo/shop/x", "octo shop/x", "a/..", 7, None,
            "o/" + "r" * 200],
)
def test_malformed_names_are_refused_without_a_request(
    client: CodegenClient, repos_fake: FakeCodegenServer, bad: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="repository"):
        client.find_repo_id(bad)
    assert repos_fake.requests == []
    with pytest.raises(InvalidRequestError):
        check_repository(bad)


def test_resolver_ttl_and_a_miss_refresh() -> None:
    clock = ManualClock()
    pages: list[tuple[int, int]] = []
    names = ["octo/shop"]

    def fetch(skip: int, limit: int) -> RepoPage:
        pages.append((skip, limit))
        items = [
            {"id": i + 1, "name": n.split("/")[1], "full_name": n} for i, n in enumerate(names)
        ]
        return RepoPage(items=items[skip : skip + limit], total=len(items), page=1, size=limit,
                        pages=1)

    resolver = RepoResolver(fetch, ttl=300, clock=clock)
    assert resolver.find_repo_id("octo/shop") == 1
    names.append("octo/new")  # added at Codegen after the map was read
    clock.advance(MISS_REFRESH / 2)
    with pytest.raises(InvalidRequestError):
        resolver.find_repo_id("octo/new")  # the map is too young to read again
    assert len(pages) == 1
    clock.advance(MISS_REFRESH)
    assert resolver.find_repo_id("octo/new") == 2  # a miss on an older map reads it again
    assert len(pages) == 2
    assert resolver.find_repo_id("octo/shop") == 1
    clock.advance(301)
    assert [repo.full_name for repo in resolver.repos()] == names  # stale: read again
    assert len(pages) == 3
    resolver.invalidate()
    resolver.find_repo_id("octo/shop")
    assert len(pages) == 4
    assert "repos=2" in repr(resolver)


def test_a_failed_listing_is_raised_and_not_cached(
    client: CodegenClient, repos_fake: FakeCodegenServer
) -> None:
    repos_fake.faults.push(Fault.status_code(503))
    with pytest.raises(ProviderServerError):
        client.find_repo_id("octo/shop")
    assert client.find_repo_id("octo/shop") == 1
