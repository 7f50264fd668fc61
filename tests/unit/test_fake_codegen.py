"""The fake Codegen server answers as the reference (codegen-openapi3.json, EXTERNAL.md) says.

Raw HTTP with ``requests``: these tests check the fake itself, not the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from tests.plugins.codegen_fake import ManualClock

RUN_FIELDS = {
    "id", "organization_id", "status", "created_at", "web_url", "result", "summary",
    "source_type", "github_pull_requests", "metadata",
}
PR_FIELDS = {"id", "title", "url", "created_at", "head_branch_name"}
LOG_FIELDS = {
    "agent_run_id", "created_at", "tool_name", "message_type", "thought", "observation",
    "tool_input", "tool_output",
}
RATE_LIMIT_BODY = {"message": "Rate limit exceeded. Please try again later.", "status_code": 429}


class Api:
    """Raw calls to a fake, with the right token and org unless told otherwise."""

    def __init__(self, srv: FakeCodegenServer) -> None:
        self.srv = srv
        self.http = requests.Session()
        self.org = f"{srv.url}/v1/organizations/{srv.org_id}"
        self.auth = {"Authorization": f"Bearer {srv.token}"}

    def call(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        return self.http.request(
            method, url, headers=self.auth if headers is None else headers, timeout=5, **kwargs
        )

    def create(self, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.call("POST", f"{self.org}/agent/run",
                         json={"prompt": "do it"} if body is None else body, **kwargs)

    def get(self, run_id: int | str, **kwargs: Any) -> requests.Response:
        return self.call("GET", f"{self.org}/agent/run/{run_id}", **kwargs)

    def list(self, **params: Any) -> requests.Response:
        return self.call("GET", f"{self.org}/agent/runs", params=params)

    def resume(self, body: Any) -> requests.Response:
        return self.call("POST", f"{self.org}/agent/run/resume", json=body)

    def logs(self, run_id: int, **params: Any) -> requests.Response:
        url = f"{self.srv.url}/v1/alpha/organizations/{self.srv.org_id}/agent/run/{run_id}/logs"
        return self.call("GET", url, params=params)


@pytest.fixture
def clocked(manual_clock: ManualClock) -> Iterator[FakeCodegenServer]:
    srv = FakeCodegenServer(clock=manual_clock, pending_seconds=10, active_seconds=20).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def api(clocked: FakeCodegenServer) -> Api:
    return Api(clocked)


# --- shapes and lifecycle -----------------------------------------------------------------


def test_create_answers_an_agent_run_response(api: Api, clocked: FakeCodegenServer) -> None:
    resp = api.create({"prompt": "fix it", "metadata": {"job": 7}, "repo_id": 3,
                       "model": "claude-sonnet", "agent_type": "claude_code",
                       "images": ["data:image/png;base64,AAAA"]})
    assert resp.status_code == 200
    run = resp.json()
    assert set(run) == RUN_FIELDS
    assert run["organization_id"] == clocked.org_id
    assert run["status"] == "PENDING"
    assert run["source_type"] == "API"
    assert run["metadata"] == {"job": 7}
    assert run["web_url"] == f"https://codegen.com/agent/trace/{run['id']}"
    assert run["result"] is None and run["github_pull_requests"] == []
    assert "Retry-After" not in resp.headers
    assert clocked.run_request(run["id"])["repo_id"] == 3
    assert clocked.run_request(run["id"])["agent_type"] == "claude_code"


def test_run_moves_pending_active_complete_with_time(
    api: Api, clocked: FakeCodegenServer, manual_clock: ManualClock
) -> None:
    run_id = api.create({"prompt": "add tests"}).json()["id"]
    seen = [api.get(run_id).json()["status"]]
    manual_clock.advance(10)
    seen.append(api.get(run_id).json()["status"])
    manual_clock.advance(19.9)
    seen.append(api.get(run_id).json()["status"])
    manual_clock.advance(0.1)
    done = api.get(run_id).json()
    seen.append(done["status"])
    assert seen == ["PENDING", "ACTIVE", "ACTIVE", "COMPLETE"]
    assert done["result"] == "Done: add tests"
    assert done["summary"]
    (pr,) = done["github_pull_requests"]
    assert set(pr) == PR_FIELDS
    assert isinstance(pr["id"], int) and pr["url"].startswith("https://github.com/")


def test_outcomes_and_forced_statuses(
    api: Api, clocked: FakeCodegenServer, manual_clock: ManualClock
) -> None:
    failed = api.create().json()["id"]
    clocked.set_outcome(failed, "FAILED")
    clocked.default_outcome = "CANCELLED"
    cancelled = api.create().json()["id"]
    manual_clock.advance(31)
    body = api.get(failed).json()
    assert body["status"] == "FAILED"
    assert body["result"] is None and body["github_pull_requests"] == []
    assert api.get(cancelled).json()["status"] == "CANCELLED"

    clocked.set_status(failed, "RUNNING")  # unknown to the reference: kept verbatim
    assert api.get(failed).json()["status"] == "RUNNING"
    clocked.set_status(failed, "PAUSED")
    assert clocked.status_of(failed) == "PAUSED"
    clocked.set_status(failed, None)
    assert clocked.status_of(failed) == "FAILED"


def test_random_durations_are_seeded_and_bounded(manual_clock: ManualClock) -> None:
    def lengths(seed: int) -> list[float]:
        srv = FakeCodegenServer(clock=manual_clock)
        srv.random_durations(1.0, 5.0, seed=seed)
        ids = [srv.add_run() for _ in range(20)]
        out = []
        for run_id in ids:
            run = srv._runs[run_id]
            out.append(run.segments[0].ends_at - run.created)
        return out

    first = lengths(3)
    assert first == lengths(3)
    assert all(1.0 <= x <= 5.0 for x in first)
    assert len(set(first)) == 20


def test_resume_puts_a_finished_run_back_to_work(
    api: Api, clocked: FakeCodegenServer, manual_clock: ManualClock
) -> None:
    run_id = api.create({"prompt": "first"}).json()["id"]
    manual_clock.advance(31)
    assert api.get(run_id).json()["status"] == "COMPLETE"
    resp = api.resume({"agent_run_id": run_id, "prompt": "also update the docs"})
    assert resp.status_code == 200
    assert resp.json()["status"] == "ACTIVE"
    manual_clock.advance(20)
    done = api.get(run_id).json()
    assert done["status"] == "COMPLETE"
    assert done["result"] == "Done: also update the docs"
    assert clocked.run_request(run_id)["prompts"] == ["first", "also update the docs"]
    assert api.resume({"agent_run_id": 999_999, "prompt": "x"}).status_code == 404
    assert api.resume({"agent_run_id": run_id}).status_code == 422


def test_logs_grow_with_the_run_and_page(
    api: Api, clocked: FakeCodegenServer, manual_clock: ManualClock
) -> None:
    run_id = api.create({"prompt": "look around"}).json()["id"]
    early = api.logs(run_id).json()
    manual_clock.advance(31)
    late = api.logs(run_id).json()
    assert early["total_logs"] < late["total_logs"]
    assert set(late) == {
        "id", "organization_id", "status", "created_at", "web_url", "result", "metadata",
        "logs", "total_logs", "page", "size", "pages",
    }
    assert late["status"] == "COMPLETE"
    for entry in late["logs"]:
        assert set(entry) == LOG_FIELDS
        assert entry["agent_run_id"] == run_id
    types = [e["message_type"] for e in late["logs"]]
    assert types[-1] == "FINAL_ANSWER" and "ACTION" in types
    times = [e["created_at"] for e in late["logs"]]
    assert times == sorted(times)  # chronological

    page = api.logs(run_id, skip=1, limit=2).json()
    assert page["logs"] == late["logs"][1:3]
    assert (page["page"], page["size"], page["pages"]) == (1, 2, 3)
    assert api.logs(run_id, reverse="true").json()["logs"] == late["logs"][::-1]
    assert api.logs(run_id, limit=101).status_code == 422
    assert api.logs(424242).status_code == 404


def test_list_is_newest_first_and_paged(api: Api, clocked: FakeCodegenServer) -> None:
    ids = [clocked.add_run(f"task {n}") for n in range(5)]
    first = api.list(limit=2).json()
    assert [r["id"] for r in first["items"]] == [ids[4], ids[3]]
    assert (first["total"], first["page"], first["size"], first["pages"]) == (5, 1, 2, 3)
    last = api.list(skip=4, limit=2).json()
    assert [r["id"] for r in last["items"]] == [ids[0]]
    assert last["page"] == 3
    assert api.list(skip=10).json()["items"] == []
    everything = api.list().json()
    assert everything["size"] == 100
    assert [r["id"] for r in everything["items"]] == ids[::-1]
    assert all(set(r) == RUN_FIELDS for r in everything["items"])


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "101", "abc"])
def test_list_limit_outside_1_to_100_is_422(api: Api, limit: str) -> None:
    resp = api.list(limit=limit)
    assert resp.status_code == 422
    (error,) = resp.json()["detail"]
    assert error["loc"] == ["query", "limit"]
    assert {"msg", "type"} <= set(error)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "prompt"]),
        ({"prompt": ""}, ["body", "prompt"]),
        ({"prompt": "   "}, ["body", "prompt"]),
        ({"prompt": 5}, ["body", "prompt"]),
        ({"prompt": "x", "agent_type": "gpt"}, ["body", "agent_type"]),
        ({"prompt": "x", "repo_id": "seven"}, ["body", "repo_id"]),
        ({"prompt": "x", "metadata": [1]}, ["body", "metadata"]),
        ({"prompt": "x", "images": "data:"}, ["body", "images"]),
        ([1, 2], ["body"]),
    ],
)
def test_create_validation_is_fastapi_422(
    api: Api, clocked: FakeCodegenServer, body: Any, loc: list[Any]
) -> None:
    resp = api.create(body)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert [e["loc"] for e in detail] == [loc]
    assert clocked.run_count == 0


def test_create_without_body_is_422(api: Api) -> None:
    resp = api.call("POST", f"{api.org}/agent/run")
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body"]


def test_bad_run_id_in_path_is_422(api: Api) -> None:
    resp = api.get("abc")
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["path", "agent_run_id"]


def test_unknown_run_is_404(api: Api) -> None:
    resp = api.get(123456)
    assert resp.status_code == 404
    assert resp.json() == {"message": "Agent run not found.", "status_code": 404}


def test_missing_or_wrong_token_is_401(api: Api) -> None:
    missing = api.get(1, headers={})
    assert missing.status_code == 401
    assert missing.json() == {"detail": "Not authenticated"}
    wrong = api.get(1, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert isinstance(wrong.json()["detail"], str)
    basic = api.get(1, headers={"Authorization": "Basic Y2c6dGVzdA=="})
    assert basic.status_code == 401


def test_other_organization_is_403(api: Api, clocked: FakeCodegenServer) -> None:
    resp = api.call("GET", f"{clocked.url}/v1/organizations/{clocked.org_id + 1}/agent/runs")
    assert resp.status_code == 403
    assert resp.json() == {
        "message": "You do not have access to this organization.", "status_code": 403,
    }


def test_max_runs_answers_402(api: Api, clocked: FakeCodegenServer) -> None:
    clocked.max_runs = 2
    assert api.create().status_code == 200
    assert api.create().status_code == 200
    resp = api.create()
    assert resp.status_code == 402
    assert resp.json()["status_code"] == 402
    assert "agent runs" in resp.json()["message"]
    assert clocked.run_count == 2


def test_unknown_path_and_wrong_method(api: Api) -> None:
    assert api.call("GET", f"{api.org}/nothing").status_code == 404
    assert api.call("DELETE", f"{api.org}/agent/run/1").status_code == 405


# --- rate limits --------------------------------------------------------------------------


def test_standard_endpoints_allow_60_requests_per_30_seconds(
    api: Api, clocked: FakeCodegenServer, manual_clock: ManualClock
) -> None:
    run_id = clocked.add_run()
    codes = [api.get(run_id).status_code for _ in range(60)]
    assert codes == [200] * 60
    refused = api.list()
    assert refused.status_code == 429
    assert refused.json() == RATE_LIMIT_BODY
    assert "Retry-After" not in refused.headers
    assert "retry-after-ms" not in refused.headers
    assert clocked.rate_limited_count == 1
    assert api.logs(run_id).status_code == 429  # one budget for every standard endpoint
    manual_clock.advance(29.9)
    assert api.get(run_id).status_code == 429
    manual_clock.advance(0.2)
    assert api.get(run_id).status_code == 200
    assert clocked.rate_limited_count == 3


def test_creation_allows_10_per_minute_apart_from_the_rest(
    api: Api, clocked: FakeCodegenServer, manual_clock: ManualClock
) -> None:
    codes = [api.create().status_code for _ in range(10)]
    assert codes == [200] * 10
    refused = api.create()
    assert refused.status_code == 429
    assert refused.json() == RATE_LIMIT_BODY
    assert "Retry-After" not in refused.headers
    assert clocked.run_count == 10
    assert api.list().status_code == 200  # reads have their own budget
    manual_clock.advance(60)
    assert api.create().status_code == 200


def test_rate_limits_can_be_switched_off(api: Api, clocked: FakeCodegenServer) -> None:
    clocked.rate_limits = False
    assert all(api.list(limit=1).status_code == 200 for _ in range(70))
    assert all(api.create().status_code == 200 for _ in range(12))
    assert clocked.rate_limited_count == 0


# --- faults ------------------------------------------------------------------------------


def test_status_faults_use_codegen_shapes(api: Api, clocked: FakeCodegenServer) -> None:
    clocked.faults.push(Fault.rate_limit())
    clocked.faults.push(Fault.status_code(503))
    clocked.faults.push(Fault.unauthorized())
    clocked.faults.push(Fault.status_code(402))
    clocked.faults.push(Fault.bad_json())

    limited = api.list()
    assert (limited.status_code, limited.json()) == (429, RATE_LIMIT_BODY)
    assert "Retry-After" not in limited.headers
    assert clocked.rate_limited_count == 1
    unavailable = api.list()
    assert unavailable.status_code == 503
    assert unavailable.text == "Service Unavailable"
    assert api.list().json() == {"detail": "Invalid authentication credentials"}
    assert api.list().json()["status_code"] == 402
    garbled = api.list()
    assert garbled.status_code == 200
    with pytest.raises(ValueError):
        garbled.json()
    assert api.list().status_code == 200
