"""The original load test in Locust: issue requests from new users at a constant global rate.

Run headless (loadtest/run.py --tool locust does): RATE (requests/s for the whole run,
via locust-plugins' constant_total_ips), EVENT_ID, USER_PREFIX, COUNTS_PATH (where the
issued / sold_out / duplicate / other counts are written at the end). 201, 409 and 410
are correct answers; anything else is a failure. Run as its own process: Locust patches
the standard library (gevent) on import.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from typing import Any

from locust import FastHttpUser, events, task
from locust_plugins.wait_time import constant_total_ips

RATE = float(os.environ.get("RATE", "2800"))
EVENT_ID = os.environ.get("EVENT_ID", "")
USER_PREFIX = os.environ.get("USER_PREFIX") or f"locust-{int(time.time())}"
COUNTS_PATH = os.environ.get("COUNTS_PATH", "")

_serial = itertools.count()
counts: Counter[str] = Counter()
_OUTCOMES = {201: "issued", 410: "sold_out", 409: "duplicate"}


class Shopper(FastHttpUser):
    wait_time = constant_total_ips(RATE)

    @task
    def issue(self) -> None:
        user = f"{USER_PREFIX}-{os.getpid()}-{next(_serial)}"
        with self.client.post(
            f"/events/{EVENT_ID}/issue", json={"user_id": user}, name="issue", catch_response=True
        ) as response:
            outcome = _OUTCOMES.get(response.status_code, "other")
            counts[outcome] += 1
            if outcome == "other":
                response.failure(f"unexpected status {response.status_code}")
            else:
                response.success()


@events.test_start.add_listener
def _check(environment: Any, **_: Any) -> None:
    if not EVENT_ID:
        raise SystemExit("EVENT_ID is required (make loadtest-locust creates and opens an event)")


@events.quitting.add_listener
def _write_counts(environment: Any, **_: Any) -> None:
    if COUNTS_PATH:
        with open(COUNTS_PATH, "w", encoding="utf-8") as out:
            json.dump({key: counts.get(key, 0) for key in ("issued", "sold_out", "duplicate", "other")}, out)
