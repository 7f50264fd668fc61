"""Poll intervals and the pages-or-GETs decision (pure functions)."""

from __future__ import annotations

import pytest

from app.config import load_settings
from app.jobs.agent_runs.schedule import (
    ListPositions,
    interval_for,
    poll_interval,
    worth_another_page,
)


def test_interval_grows_every_n_polls_up_to_the_ceiling() -> None:
    grow = {"base": 10.0, "growth": 1.5, "every": 4, "ceiling": 60.0}
    assert [poll_interval(n, **grow) for n in (0, 3, 4, 7, 8, 12)] == [
        10.0, 10.0, 15.0, 15.0, 22.5, 33.75,
    ]  # fmt: skip
    assert poll_interval(16, **grow) == 50.625
    assert poll_interval(20, **grow) == 60.0  # the ceiling
    assert poll_interval(10_000_000, **grow) == 60.0  # no overflow
    assert poll_interval(5, base=3.0, growth=1.0, every=1, ceiling=60.0) == 3.0
    with pytest.raises(ValueError):
        poll_interval(-1, **grow)


def test_interval_from_settings() -> None:
    settings = load_settings(
        aiw_agent_poll_interval=2, aiw_agent_poll_growth=2, aiw_agent_poll_growth_every=3,
        aiw_agent_poll_max_interval=10,
    )  # fmt: skip
    assert [interval_for(settings, n) for n in (0, 2, 3, 6, 9)] == [2, 2, 4, 8, 10]


def newest_first(first: int, count: int) -> list[int]:
    return list(range(first, first - count, -1))


def test_paging_stops_once_every_wanted_run_is_seen() -> None:
    # 2,000 runs, ids 3000..1001 newest first; the wanted ones are the newest 250.
    wanted = set(newest_first(3000, 250))
    pages = 0
    skip = 0
    while True:
        page = newest_first(3000 - skip, 100)
        pages += 1
        wanted -= set(page)
        skip += 100
        if not worth_another_page(wanted, page, 100, at_end=skip >= 2000):
            break
    assert pages == 3 and not wanted


def test_runs_deep_in_the_list_are_left_to_gets() -> None:
    page = newest_first(3000, 100)  # the first page: 3000..2901
    # Two wanted runs ~15 pages down: 15 pages for 2 runs costs more than 2 GETs.
    assert not worth_another_page({1500, 1400}, page, 100, at_end=False)
    # Thirty of them on the next page: one page beats thirty GETs.
    assert worth_another_page(set(range(2871, 2901)), page, 100, at_end=False)
    # Five on the next page and one far away: the next page still pays.
    assert worth_another_page({2899, 2898, 2897, 2896, 2895, 1001}, page, 100, at_end=False)
    # One on the next page: a page or a GET cost the same; the GET is exact.
    assert not worth_another_page({2899}, page, 100, at_end=False)


def test_sparse_ids_are_taken_into_account() -> None:
    # The organization's runs are every 10th id (other organizations in between).
    page = list(range(30_000, 29_000, -10))  # 100 runs
    wanted = set(range(28_990, 28_000, -10))  # the whole next page
    assert worth_another_page(wanted, page, 100, at_end=False)
    assert not worth_another_page({10_000, 9_000}, page, 100, at_end=False)


def test_nothing_more_to_read() -> None:
    page = newest_first(3000, 100)
    assert not worth_another_page(set(range(2800, 2900)), page, 100, at_end=True)
    assert not worth_another_page(set(), page, 100, at_end=False)
    assert not worth_another_page({5}, [], 100, at_end=False)
    # Wanted runs newer than what the page shows are not further down: GET them.
    assert not worth_another_page({3500, 3600, 3700}, page, 100, at_end=False)


def test_list_positions_give_a_safe_place_to_start() -> None:
    positions = ListPositions()
    assert positions.start_for(2500) == 0  # nothing known: the top
    positions.record(0, newest_first(3000, 100))  # 3000 at 0 .. 2901 at 99
    positions.record(100, newest_first(2900, 100))  # 2900 at 100 .. 2801 at 199
    assert positions.start_for(2850) == 100  # below 2900 (seen at 100), not below 2801
    assert positions.start_for(2801) == 199
    assert positions.start_for(2900) == 100
    assert positions.start_for(2901) == 99
    assert positions.start_for(2950) == 0  # only 3000 (at 0) is known to be at least as new
    assert positions.start_for(3001) == 0
    # New runs pushed everything down by 5: the later sighting wins.
    positions.record(105, newest_first(2900, 100))
    assert positions.start_for(2900) == 105
    positions.record(90, newest_first(2900, 1))  # an older (smaller) sighting is ignored
    assert positions.start_for(2900) == 105
