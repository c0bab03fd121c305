"""When a metrics page is settled (scripts/client/prometheus_scrape.py): never with a batch read
in part, except, on a page that takes values in at an interval, the last report of a worker that
stopped mid-report, which stays in part for good. The pages below are written out, one per call,
as the engines' pages would read."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from scripts.client import prometheus_scrape
from scripts.client.prometheus_scrape import Scrape, settled_scrape


def page(**batches: tuple[float, float]) -> Scrape:
    """Each worker's (first lines, last lines) of its batches: its decode_transform +Inf bucket
    and its handler count."""
    scraped: Scrape = {}
    for worker, (first, last) in batches.items():
        scraped[
            (
                "handler_stage_seconds_bucket",
                frozenset({("Stage", "decode_transform"), ("le", "+Inf"), ("WorkerId", worker)}),
            )
        ] = first
        scraped[("handler_stage_seconds_count", frozenset({("Stage", "handler"), ("WorkerId", worker)}))] = last
    return scraped


def served(monkeypatch: pytest.MonkeyPatch, pages: Iterator[Scrape]) -> None:
    """The page each scrape gets; the last one stays."""
    last: list[Scrape] = []

    def scrape(_: str) -> Scrape:
        last[:] = [next(pages, last[0] if last else {})]
        return last[0]

    monkeypatch.setattr(prometheus_scrape, "scrape", scrape)
    monkeypatch.setattr(prometheus_scrape, "STOPPED_WORKER_S", 0.6)


def test_a_batch_read_in_part_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    served(monkeypatch, iter([page(a=(3, 2))] * 2 + [page(a=(3, 3))]))
    assert settled_scrape("metrics", timeout_s=5) == page(a=(3, 3))


@pytest.mark.parametrize("report_s", [0, 0.05])
def test_a_live_workers_batch_in_part_is_never_settled(monkeypatch: pytest.MonkeyPatch, report_s: float) -> None:
    """A batch whose first lines keep coming is a live worker's: on no page is it settled."""
    pages = (page(a=(count + 1, count)) for count in range(10_000))
    served(monkeypatch, pages)
    with pytest.raises(TimeoutError):
        settled_scrape("metrics", report_s=report_s, timeout_s=1.5)


def test_on_a_reporting_page_the_handlers_samples_stand_for_three_reports_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/engines.md: a value counted just before a scrape may be a report or two on its way."""
    served(monkeypatch, iter([page(a=(3, 3))]))
    started = time.monotonic()
    assert settled_scrape("metrics", report_s=0.3, timeout_s=5) == page(a=(3, 3))
    assert time.monotonic() - started >= 3 * 0.3


def test_on_a_reporting_page_a_stopped_workers_last_batch_in_part_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ray Serve replica stopped before it reported its batch's last lines: its page holds them
    in part for good, and differences of two scrapes are the other workers'."""
    served(monkeypatch, iter([page(a=(5, 4), b=(7, 7))]))
    assert settled_scrape("metrics", report_s=0.05, timeout_s=5) == page(a=(5, 4), b=(7, 7))


def test_on_torchserves_page_a_batch_in_part_is_never_taken_for_a_stopped_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TorchServe's frontend reads every line a worker wrote: a batch in part is one it is reading."""
    served(monkeypatch, iter([page(a=(5, 4))]))
    with pytest.raises(TimeoutError):
        settled_scrape("metrics", report_s=0, timeout_s=1.5)
