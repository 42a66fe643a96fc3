"""`ttsf` with a probe: what the installed `ttsf` entry point runs (ttsf.cli.main), plus one line on
stderr at exit saying how many pipelines the process loaded and which heavy libraries it imported.

    python benchmarks/_ttsf_probe.py run --config cfg.json [--executor threads]

It imports ttsf_core.pipelines before the CLI (every `ttsf run`, finished or not, imports it anyway,
through ttsf_core.usecases.runner) and counts calls of its load_pipeline, which ttsf_core.usecases.runner and
tasks.runtime bind when they are imported. Used by bench_resume.py.
"""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttsf_core.pipelines as pipelines  # noqa: E402

LOADS = []
_original = pipelines.load_pipeline


def _counted(*args, **kwargs):
    LOADS.append(time.perf_counter())
    return _original(*args, **kwargs)


pipelines.load_pipeline = _counted


@atexit.register
def _report() -> None:
    heavy = [name for name in ("torch", "diffusers", "transformers", "prefect", "pandas") if name in sys.modules]
    print(f"PROBE pipelines_loaded={len(LOADS)} imported={','.join(heavy) or '-'} "
          f"seconds={time.perf_counter() - STARTED:.3f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    from ttsf.cli import main

    sys.argv[0] = "ttsf"
    sys.exit(main())
