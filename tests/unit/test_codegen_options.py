"""``build_run_input`` (pure: options -> a run's creation input) and ``resolve_run_input``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.codegen import DEFAULT_MODEL, RunInput, build_run_input, compose_prompt, resolve_run_input
from app.codegen.options import IGNORED_OPTIONS, OPTIONS, check_branch, check_priority
from app.core.errors import InvalidRequestError


class Lookup:
    """A ``RepoLookup`` that counts its calls."""

    def __init__(self, repos: dict[str, int]) -> None:
        self.repos = repos
        self.calls: list[str] = []

    def find_repo_id(self, full_name: str) -> int:
        self.calls.append(full_name)
        try:
            return self.repos[full_name]
        except KeyError:
            raise InvalidRequestError(f"repository {full_name!r} is not known") from None


def test_the_seed_example_becomes_one_creation_input() -> None:
    run = build_run_input(
        "Fix the flaky test",
        "Be brief.",
        {"priority": "normal", "tags": ["ci", "flaky"], "repository": "octo/shop",
         "branch": "main"},
    )
    assert run.prompt == (
        "## Instructions\n\nBe brief.\n\n## Task\n\n"
        "Work on the branch `main` of octo/shop.\n\nFix the flaky test"
    )
    assert run.metadata == {
        "tags": ["ci", "flaky"], "repository": "octo/shop", "branch": "main", "priority": "normal",
    }
    assert run.repository == "octo/shop" and run.repo_id is None and run.needs_resolution
    json.dumps(run.to_dict())  # storable as is
    with pytest.raises(InvalidRequestError, match="not resolved"):
        run.create_kwargs()
    lookup = Lookup({"octo/shop": 7})
    resolved = resolve_run_input(run, lookup)
    assert resolved.repo_id == 7 and not resolved.needs_resolution
    assert resolved.create_kwargs() == {
        "images": None, "metadata": run.metadata, "repo_id": 7, "model": None, "agent_type": None,
    }
    assert resolve_run_input(resolved, lookup) is resolved  # nothing more to ask
    assert lookup.calls == ["octo/shop"]


def test_without_options_nothing_is_added() -> None:
    run = build_run_input("p")
    assert run == RunInput(prompt="p")
    assert run.create_kwargs()["metadata"] is None
    assert resolve_run_input(run, Lookup({})) is run  # no repository: no lookup


def test_compose_prompt_places_the_branch_line() -> None:
    assert compose_prompt("p", None) == "p"
    assert compose_prompt("p", "  ") == "p"
    assert compose_prompt("p", None, branch="dev") == "Work on the branch `dev`.\n\np"
    assert compose_prompt("p", None, repository="o/r") == "p"  # repo_id says it already
    assert compose_prompt("p", "S", repository="o/r", branch="b").startswith(
        "## Instructions\n\nS\n\n## Task\n\nWork on the branch `b` of o/r."
    )


def test_metadata_tags_model_and_the_rest() -> None:
    run = build_run_input(
        "p",
        options={
            "metadata": {"ticket": "T-1", "tags": ["old"], "branch": "main"},
            "tags": ("new", "old"),
            "branch": "main",  # agrees with metadata: fine
            "repo_id": 12,
            "images": ["data:image/png;base64,AAAA"],
            "agent_type": "claude_code",
            "tools": [{"type": "function"}],  # ignored chat options
            "tool_choice": "required",
        },
        model="claude-sonnet-4",
    )
    assert run.metadata == {"ticket": "T-1", "tags": ["old", "new"], "branch": "main"}
    assert run.create_kwargs() == {
        "images": ["data:image/png;base64,AAAA"], "metadata": run.metadata, "repo_id": 12,
        "model": "claude-sonnet-4", "agent_type": "claude_code",
    }
    assert build_run_input("p", model=DEFAULT_MODEL).model is None  # the pseudo-model
    assert {"repository", "branch", "priority"} <= OPTIONS
    assert "tools" in IGNORED_OPTIONS


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"repo": 3}, "codegen does not take option(s) repo"),
        ({"branch": 5}, "branch must be a string"),
        ({"branch": ""}, "branch is empty"),
        ({"branch": "my branch"}, "not a valid git branch name"),
        ({"branch": "a..b"}, "'..'"),
        ({"branch": "-x"}, "starts with '-'"),
        ({"branch": "feature/"}, "ends with '/'"),
        ({"branch": "x.lock"}, ".lock"),
        ({"branch": "a/.hidden"}, "starts with '.'"),
        ({"branch": "what?"}, "'?'"),
        ({"branch": "@"}, "'@'"),
        ({"branch": "b@{1}"}, "'@{'"),
        ({"branch": "tab\there"}, "not a valid git branch name"),
        ({"branch": "x" * 256}, "over 255"),
        ({"priority": "urgent"}, "priority must be one of 'high', 'normal', 'low'"),
        ({"priority": "HIGH"}, "priority must be one of"),
        ({"priority": 1}, "priority must be one of"),
        ({"repository": "shop"}, "owner/repo"),
        ({"repository": ["octo/shop"]}, "repository must be a string"),
        ({"repository": ""}, "repository is empty"),
        ({"repository": "octo/shop", "metadata": {"repository": "acme/api"}},
         "metadata['repository'] is 'acme/api' but repository is 'octo/shop'"),
        ({"priority": "low", "metadata": {"priority": "high"}}, "metadata['priority']"),
        ({"metadata": "x"}, "metadata must be a JSON object"),
        ({"metadata": {"x": float("nan")}}, "not JSON-serializable"),
        ({"tags": "nightly"}, "tags must be a list of strings"),
        ({"repo_id": "12"}, "repo_id must be a positive integer"),
        ({"repo_id": 0}, "repo_id must be a positive integer"),
        ({"agent_type": "devin"}, "agent_type must be one of"),
        ({"images": "data:x"}, "images must be a list"),
    ],
)
def test_bad_options_name_the_problem(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_run_input("p", options=options)
    assert words in str(info.value)


def test_bad_prompt_and_model() -> None:
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        build_run_input("  ")
    with pytest.raises(InvalidRequestError, match="system_prompt"):
        build_run_input("p", 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="model"):
        build_run_input("p", model=" ")


@pytest.mark.parametrize("good", ["main", "feature/x-1", "release/2.0", "fix_#12", "a.b", "ünï"])
def test_good_branch_names(good: str) -> None:
    assert check_branch(good) == good


def test_priorities() -> None:
    assert [check_priority(p) for p in ("high", "normal", "low")] == ["high", "normal", "low"]


def test_repository_and_repo_id_must_agree() -> None:
    lookup = Lookup({"octo/shop": 7})
    agreeing = build_run_input("p", options={"repository": "octo/shop", "repo_id": 7})
    assert resolve_run_input(agreeing, lookup).repo_id == 7
    disagreeing = build_run_input("p", options={"repository": "octo/shop", "repo_id": 8})
    with pytest.raises(InvalidRequestError) as info:
        resolve_run_input(disagreeing, lookup)
    assert "'octo/shop' is repo_id 7" in str(info.value) and "repo_id 8" in str(info.value)
    with pytest.raises(InvalidRequestError, match="not known"):
        resolve_run_input(build_run_input("p", options={"repository": "octo/x"}), lookup)
