"""What graders behind an HTTP API share (gemini, openai): one asyncio loop per verifier on its own
thread, so one semaphore bounds every request of every calling thread to max_concurrency and a
deadline can cancel a request (closing its connection); images checked before anything is sent; the
transport failures of every HTTP stack their SDKs use. The loop is made on first use: a verifier that
is only validated never starts a thread."""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
from typing import Any, Sequence

from PIL import Image

from ttsf_core.storage import files
from ttsf_core.verifiers.base import Grades, all_graded


class EventLoop:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class RemoteGrader:
    """Mixin: `score` from the grader's `score_partial`, `batch_size` (max_concurrency), `_event_loop()`,
    `_semaphore()`, a lock, and `with verifier:` closing it (`close()`)."""

    name: str
    args: Any

    @property
    def batch_size(self) -> int:
        """Images per call: as many as may be in flight at once."""
        return self.args.max_concurrency

    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]:
        """One Grades per image, in input order; raises the typed error of a failed image."""
        return all_graded(self.score_partial(prompt, images))

    def _init_remote(self) -> None:
        self._loop: EventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    def _event_loop(self) -> EventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = EventLoop(f"{self.name}-verifier")
            return self._loop

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on the loop's thread, where it is used
            self._slots = asyncio.Semaphore(self.args.max_concurrency)
        return self._slots

    def _take_loop(self) -> EventLoop | None:
        with self._lock:
            loop, self._loop = self._loop, None
        return loop

    def close(self) -> None:  # pragma: no cover - each grader closes its own client too
        loop = self._take_loop()
        if loop is not None:
            loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def png_bytes(image: Image.Image) -> bytes:
    """The image as an API grader uploads it: lossless PNG (modes PNG cannot hold become RGB)."""
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    return files.png_bytes(image)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Timeouts, dropped or reset connections, cut bodies and proxy failures of every HTTP stack an
    SDK may use: httpx, httpx2 (taken over httpx when installed) and aiohttp (async paths)."""
    found: list[type[BaseException]] = []
    for module_name in ("httpx", "httpx2"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        found += [module.TimeoutException, module.NetworkError, module.ProtocolError, module.ProxyError]
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        found += [aiohttp.ClientError]
    return tuple(found)


TRANSIENT_ERRORS = _transient_errors()


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header's wait in seconds (a number, or an HTTP date), or None when it says none."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
