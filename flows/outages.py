"""A Prefect server that cannot be reached for a while is weather, not a failure.

Every call ttsf makes to the server on its own (polling batch runs, submitting and cancelling them,
artifacts, state corrections) goes through `ride_out`: a call that fails because the server is
unreachable (a connection refused or reset, a timeout, a 5xx/408/429 answer) is tried again with a
back-off that doubles from 1 s up to BACKOFF_CAP_S, for up to `dispatch.server_outage_s`; any other
error is raised at once. A fresh Prefect client does not retry a refused connection itself
(prefect/client/base.py, PrefectHttpxAsyncClient.send: ConnectError is retried only after that
client has connected once; read in Prefect 3.9.1), so without this one refused poll ends a run.

Inside a flow run, `get_client()` hands out the engine's own client (prefect/client/orchestration
get_client: the SyncClientContext's), which has connected, so it does retry a refused connection:
PREFECT_CLIENT_MAX_RETRIES times with 2**n s waits. The deployments and the worker units set that to 8
(about 8.5 minutes) so that the engine's own state reports ride an outage out; ttsf's calls run under
`fail_fast()` instead (no retries inside Prefect's client), so that the dataset run keeps reading
heartbeats and saying what it waits for, and backs off on its own terms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import contextlib
from collections.abc import Iterator

import httpx

T = TypeVar("T")
BACKOFF_CAP_S = 15.0
RETRYABLE_STATUS = {408, 429}
_log = logging.getLogger("ttsf.outages")


class ServerUnreachable(RuntimeError):
    """The Prefect server could not be reached for longer than the run rides out."""


def is_outage(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the server could not be reached or answered 5xx."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:  # the cause chain, bounded
        if isinstance(current, httpx.TransportError):
            return True
        if isinstance(current, httpx.HTTPStatusError):
            status = current.response.status_code
            return status >= 500 or status in RETRYABLE_STATUS
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Prefect client calls in this block are tried once: ride_out (or the caller) decides what next.
    PREFECT_CLIENT_MAX_RETRIES is read at each request from the current settings context (prefect/client/
    base.py _send_with_retry, 3.9.1), a context variable: other threads keep their retries."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        yield


def backoff_s(failures: int) -> float:
    """Wait before try `failures + 1`: 1, 2, 4, 8, then BACKOFF_CAP_S."""
    return min(BACKOFF_CAP_S, 2.0 ** max(failures - 1, 0))


def ride_out(call: Callable[[], T], what: str, budget_s: float, logger: logging.Logger | None = None,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """`call()`, tried again while the server is unreachable, for up to `budget_s` seconds in all.
    Raises ServerUnreachable (from the last error) once that is spent; other errors at once."""
    logger = logger or _log
    began, failures, last_said = clock(), 0, None
    while True:
        try:
            with fail_fast():
                result = call()
        except Exception as error:  # noqa: BLE001 - only outages are retried; anything else is raised below
            if not is_outage(error):
                raise
            failures += 1
            waited = clock() - began
            if waited >= budget_s:
                raise ServerUnreachable(f"{what}: the Prefect server could not be reached for {waited:.0f} s "
                                        f"(dispatch.server_outage_s {budget_s:g}): {type(error).__name__}: "
                                        f"{error}") from error
            if last_said is None or clock() - last_said >= 60:  # one line a minute, not one a try
                logger.warning("%s: the Prefect server cannot be reached (%s); trying again for up to %.0f s more",
                               what, type(error).__name__, budget_s - waited)
                last_said = clock()
            sleep(min(backoff_s(failures), max(budget_s - waited, 0.1)))
            continue
        if failures:
            logger.info("%s: the Prefect server answers again after %.0f s", what, clock() - began)
        return result


def tolerate(call: Callable[[], object], what: str, budget_s: float, logger: logging.Logger | None = None) -> bool:
    """For reports that only keep the UI true (artifacts, a batch's page): ride the outage out, then
    leave the report with one warning rather than fail finished work. False: it was left."""
    try:
        ride_out(call, what, budget_s, logger)
    except ServerUnreachable as error:
        (logger or _log).warning("%s; left (the work it reports is done and on disk)", error)
        return False
    return True
