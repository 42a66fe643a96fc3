"""Helpers shared by the CPU benchmarks (imported as a sibling module, not as a package).

The benchmark scripts put the repository root on sys.path themselves, so that `ttsf_core` and
`tests/fake_gemini.py` import from a plain checkout.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a red fox sleeping under a maple tree in autumn",
    "a lighthouse on a rocky coast during a thunderstorm",
    "a bowl of ramen with a soft boiled egg, studio lighting",
    "an astronaut riding a horse across the surface of the moon",
]
FAKE_KEY = "fake-key-for-the-local-server"

# Nothing here may reach the network: the tiny model is built locally and loaded from a folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def add_tiny_model_args(parser, steps: bool = True) -> None:
    """The tiny FLUX's size and the run's threads and seed: the same flags in every CPU benchmark."""
    parser.add_argument("--width-multiplier", type=int, default=2, help="tiny FLUX width (heads = 2 x this)")
    parser.add_argument("--num-layers", type=int, default=2, help="double- and single-stream blocks each")
    parser.add_argument("--resolution", type=int, default=128, help="height = width in pixels (multiple of 16)")
    if steps:
        parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--max-sequence-length", type=int, default=128, help="T5 tokens (tt-scale-flux uses 512)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: a second thread on a shared 2-core VM makes runs erratic)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the candidates")


def prepare_workdir(workdir: Path, args) -> tuple[Path, Path]:
    """The set-up every Prefect benchmark shares: isolated Prefect home, threads, quiet libraries, a fake
    Gemini key, the tiny model and the prompts file. Returns (model folder, prompts file)."""
    prefect_environment(workdir)
    set_threads(args.threads)
    quiet_libraries()
    use_fake_gemini_key()
    model_dir = build_tiny_model(workdir, args.width_multiplier, args.num_layers)
    return model_dir, write_prompts(workdir, args.prompts)


def one_call_per_image(call, prompt: str, latent, args):
    """tt-scale-flux's way of generating: one pipeline call per candidate with the prompt TEXT, so the
    text encoders run again for every image. `args` holds the pipeline call arguments."""
    return call(
        prompt=[prompt],
        latents=latent,
        height=args.height,
        width=args.width,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        max_sequence_length=args.max_sequence_length,
        output_type="pil",
    ).images[0]


def quiet_libraries() -> None:
    """Silence progress bars and load-time chatter, so stdout holds only the tables."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def build_tiny_model(folder: Path, width_multiplier: int, num_layers: int) -> Path:
    """Build the scaled tiny FLUX once into `folder` (save_pretrained), like a downloaded model."""
    from ttsf_core.pipelines.tiny import ensure_tiny_flux

    return ensure_tiny_flux(folder / f"tiny-flux-w{width_multiplier}-l{num_layers}", width_multiplier, num_layers)


def load_tiny_pipeline(model_dir: Path, config_overrides: dict | None = None):
    """Load the saved folder through ttsf's own loader (from_pretrained, fp32, CPU)."""
    from ttsf_core.config import build_config, merge
    from ttsf_core.pipelines import load_pipeline

    base = {"pretrained_model_name_or_path": str(model_dir), "torch_dtype": "fp32", "device": "cpu"}
    return load_pipeline(build_config(merge(base, config_overrides or {})))


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def timed_cpu(function, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, this thread's CPU seconds, result). With one torch thread the model runs on the
    calling thread, so the CPU seconds are its cost even while other processes steal the machine."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, time.thread_time() - start_cpu, result


@dataclass
class BusyClock:
    """Seconds spent inside wrapped calls, and when the first began and the last ended.

    Also the calling thread's CPU seconds inside them: with one torch thread the model runs on the
    calling thread, so this is the generation cost that other processes on a shared VM (which steal
    wall time, not thread CPU time) cannot inflate.
    """

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    first_start: float | None = None
    last_end: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wrap(self, function):
        """Sums over every thread that calls the wrapped function (thread-seconds when they overlap)."""
        def timed_call(*args, **kwargs):
            start, start_cpu = time.perf_counter(), time.thread_time()
            with self._lock:
                if self.first_start is None:
                    self.first_start = start
            try:
                return function(*args, **kwargs)
            finally:
                cpu, end = time.thread_time() - start_cpu, time.perf_counter()
                with self._lock:
                    self.cpu_seconds += cpu
                    self.last_end = max(self.last_end, end)
                    self.seconds += end - start

        return timed_call


class _TimingLock:
    """Stands in for CandidateGenerator._lock: acquires the real lock, then times the held section."""

    def __init__(self, lock, clock: BusyClock, threads: set[int]):
        self._lock, self._clock, self._threads = lock, clock, threads

    def __enter__(self):
        self._lock.acquire()
        self._start, self._start_cpu = time.perf_counter(), time.thread_time()
        self._threads.add(threading.get_ident())
        if self._clock.first_start is None:
            self._clock.first_start = self._start
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._clock.cpu_seconds += time.thread_time() - self._start_cpu
            self._clock.last_end = time.perf_counter()
            self._clock.seconds += self._clock.last_end - self._start
        finally:
            self._lock.release()


@contextmanager
def generation_clock(generator):
    """Yield (clock, thread ids): the time a CandidateGenerator spends generating (encode the prompt,
    draw latents, the pipeline call), on whichever threads the executor runs it. The generator holds
    its lock for exactly that (one pipeline call at a time), so the clock times the held sections:
    waiting for the lock is not counted, and with one torch thread the CPU seconds are the model's."""
    clock, threads = BusyClock(), set()
    original = generator._lock
    generator._lock = _TimingLock(original, clock, threads)
    try:
        yield clock, threads
    finally:
        generator._lock = original


@contextmanager
def png_clocks(generating_threads: set[int]):
    """Yield (on generating threads, on other threads): BusyClocks over the store's PNG writes
    (ttsf_core.storage.store.write_png), split by whether a generating thread did the write."""
    import ttsf_core.storage.store as store

    on, off = BusyClock(), BusyClock()

    def wrapper(original):
        def timed(*args, **kwargs):
            return (on if threading.get_ident() in generating_threads else off).wrap(original)(*args, **kwargs)
        return timed

    with patched(store, "write_png", wrapper):
        yield on, off


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (not children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def use_fake_gemini_key() -> None:
    """Only the local fake server is ever contacted: never send a real key anywhere."""
    os.environ["GEMINI_API_KEY"] = FAKE_KEY
    for name in ("GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_API_KEY"):
        os.environ.pop(name, None)


def write_prompts(folder: Path, count: int) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:count]) + "\n")
    return path


def tiny_model_fields(args, model_dir: Path) -> dict:
    """The config fields of the scaled tiny FLUX every CPU benchmark runs: fp32 on the CPU."""
    return {
        "pretrained_model_name_or_path": str(model_dir),
        "torch_dtype": "fp32",
        "device": "cpu",
        "seed": args.seed,
        "pipeline_call_args": {
            "height": args.resolution,
            "width": args.resolution,
            "num_inference_steps": args.steps,
            "max_sequence_length": args.max_sequence_length,
        },
    }


def search_config(args, model_dir: Path, prompts_file: Path, output_dir: Path, base_url: str, **overrides):
    """The run config of the CPU search benchmarks: the scaled tiny FLUX, fake Gemini at `base_url`.

    `args` carries seed, resolution, steps, max_sequence_length, rounds and prompts; `overrides` are
    deep-merged over the result (e.g. search_args, prompts)."""
    from ttsf_core.config import build_config, merge

    return build_config(merge(tiny_model_fields(args, model_dir) | {
        "verifier_args": {"name": "gemini", "options": {"base_url": base_url}},
        "search_args": {"search_rounds": args.rounds},
        "prompts": {"dataset": str(prompts_file), "num_prompts": args.prompts},
        "output_dir": str(output_dir),
    }, overrides))


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_line(threads: int) -> str:
    import torch

    return (f"machine: {os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__} "
            f"with {threads} intra-op thread(s), python {platform.python_version()}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def max_pixel_diff(first, second) -> int:
    """Largest difference of one 8-bit channel value between two lists of PIL images."""
    import numpy as np

    worst = 0
    for a, b in zip(first, second, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        worst = max(worst, int(diff.max()))
    return worst


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----- the fake Gemini (tests/fake_gemini.py), in this process or in its own -----

class ThreadServer:
    """FakeGeminiServer in a thread of this process."""

    def __init__(self, latency: float):
        from fake_gemini import FakeGeminiServer

        self._server = FakeGeminiServer(latency_s=latency).start()
        self.url = self._server.url

    def call_count(self) -> int:
        return self._server.call_count

    def stop(self) -> None:
        self._server.stop()


class ProcessServer:
    """FakeGeminiServer in a child process, asked for its call counter over a pipe."""

    def __init__(self, latency: float):
        self._conn, child_conn = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(child_conn, latency), name="fake-gemini", daemon=True)
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("the fake Gemini process did not start within 60 s")
        self.url = self._conn.recv()

    @property
    def pid(self) -> int:
        return self._process.pid

    def call_count(self) -> int:
        self._conn.send("count")
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(timeout=10)


def _serve(conn, latency: float) -> None:
    from fake_gemini import FakeGeminiServer

    with FakeGeminiServer(latency_s=latency) as server:
        conn.send(server.url)
        while (command := conn.recv()) != "stop":
            if command == "count":
                conn.send(server.call_count)


# ----- a temporary Prefect server, started before anything is timed -----

def prefect_environment(folder: Path) -> None:
    """Before prefect is imported: its home (profiles, local storage) in `folder`, no analytics, and
    only warnings on stdout (the tables stay readable)."""
    os.environ["PREFECT_HOME"] = str(folder / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class PrefectServer:
    """`prefect_test_harness`: a temporary SQLite-backed server in a subprocess, shared by every flow
    run of the benchmark, so its start-up (migrations) is paid once, before any timing starts.

    The server records task runs from the events the client sends, asynchronously: after a flow
    returns it may go on working for seconds. `wait_idle()` waits for that, so that one side's
    backlog never lands on the next side's timing, and returns the server CPU it took."""

    def __init__(self, startup_timeout_s: int = 120):
        self.startup_timeout_s = startup_timeout_s
        self.startup_s = 0.0
        self._process = None

    def __enter__(self) -> "PrefectServer":
        import psutil
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.testing.utilities import prefect_test_harness

        self._harness = prefect_test_harness(server_startup_timeout=self.startup_timeout_s)
        start = time.perf_counter()
        self._harness.__enter__()
        self.startup_s = time.perf_counter() - start
        self._process = psutil.Process(SubprocessASGIServer._instances[None].server_process.pid)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.wait_idle()  # a server stopped while recording prints task_run_recorder errors
        finally:
            self._harness.__exit__(*exc_info)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process (and any children) so far."""
        processes = [self._process, *self._process.children(recursive=True)]
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except Exception:  # noqa: BLE001 - a child that just ended
                continue
            total += times.user + times.system
        return total

    def wait_idle(self, quiet_window_s: float = 1.0, max_wait_s: float = 120.0) -> float:
        """Wait until the server used < 5% of a core over `quiet_window_s`; its CPU seconds meanwhile."""
        start_cpu, deadline = self.cpu_seconds(), time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            before = self.cpu_seconds()
            time.sleep(quiet_window_s)
            if self.cpu_seconds() - before < 0.05 * quiet_window_s:
                break
        return self.cpu_seconds() - start_cpu

    def task_run_count(self) -> int:
        """Task runs the server has recorded (all flow runs)."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            response = client.request("POST", "/task_runs/count", json={})
            return int(response.json())


@contextmanager
def heartbeat_joins():
    """Yield a list that gets, for every flow run that ends meanwhile, the seconds its engine spent
    joining the flow's heartbeat thread. In Prefect 3.9.1 that thread sleeps in whole seconds and is
    joined when the flow run ends, so each flow run waits up to 1 s (until the next tick) for it."""
    import prefect.flow_engine as engine

    joins: list[float] = []

    def wrapper(original):
        @contextmanager
        def timed(*args, **kwargs):
            manager = original(*args, **kwargs)
            manager.__enter__()
            try:
                yield
            finally:
                start = time.perf_counter()
                manager.__exit__(None, None, None)
                joins.append(time.perf_counter() - start)

        return timed

    with patched(engine, "_send_heartbeats", wrapper):
        yield joins


@contextmanager
def patched(module, name: str, wrapper):
    """Replace `module.name` by `wrapper(original)` for the duration (benchmarks only)."""
    original = getattr(module, name)
    setattr(module, name, wrapper(original))
    try:
        yield
    finally:
        setattr(module, name, original)
