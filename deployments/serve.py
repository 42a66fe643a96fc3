"""Serve the `search-dataset` flow from this one process: no work pool, no worker.

    python deployments/serve.py --tiny                              # on-demand runs, tiny CPU config
    prefect deployment run 'search-dataset/tiny-cpu' --watch        # trigger a run (another shell)
    python deployments/serve.py --cron "0 2 * * *" --config my.json # nightly at 02:00 UTC
    prefect deployment run 'search-dataset/serve'                   # trigger a run of that one

Registers a deployment with the server PREFECT_API_URL names, then runs its flow runs in subprocesses
of this process until Ctrl-C or SIGTERM (which pause its schedule). Its name: `--name`; by default
`tiny-cpu` with `--tiny` (the name the README's walk-through runs, the same search as prefect.yaml's
`tiny-cpu`), else `serve`. A deployment of that name already on a work pool (prefect.yaml's `tiny-cpu`
after `prefect deploy`) is refused rather than rewritten: pass another `--name`. A `--cron`
schedule is created active: asking for it is switching it on. The
config is read and validated exactly like `ttsf run --config` (JSON, TOML or YAML; tt-scale-flux's
keys load as they are) and becomes the deployment's default `config` parameter. Relative paths in it
(output_dir, a local dataset) are relative to the folder this is started in. See
docs/deployment.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a checkout works without `pip install -e .`

from ttsf_core.config import ConfigError, build_config, merge  # noqa: E402
from ttsf_core.config_files import read_config_file  # noqa: E402

# The CPU smoke-test configuration (the same as deployments/prefect.yaml's `tiny-cpu` deployment).
TINY_CONFIG: dict[str, Any] = {
    "pretrained_model_name_or_path": "tiny-flux",
    "device": "cpu",
    "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2},
    "verifier_args": {"name": "imagestats"},
    "search_args": {"search_rounds": 2},
    "prompts": {"prompt": "a tiny astronaut hatching from an egg on the moon", "num_prompts": None},
    "output_dir": "output/tiny-cpu",
    "task_workers": 4,
}
FLOW_NAME = "search-dataset"
TINY_NAME = "tiny-cpu"  # prefect.yaml's CPU deployment: `prefect deployment run 'search-dataset/tiny-cpu'` either way
DEFAULT_NAME = "serve"
ENV_DEFAULTS = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python deployments/serve.py",
        description="Serve the search-dataset flow as a deployment from this process (Prefect's "
                    "flow.serve): runs come from its schedule, the UI or `prefect deployment run`.",
        epilog="Needs a Prefect server: start `prefect server start` and export "
               "PREFECT_API_URL=http://127.0.0.1:4200/api first.",
    )
    parser.add_argument("--name", default=None,
                        help="Deployment name; runs are triggered as 'search-dataset/NAME' "
                             f"[{TINY_NAME} with --tiny, else {DEFAULT_NAME}].")
    parser.add_argument("--cron", default=None,
                        help='Cron schedule, e.g. "0 2 * * *" for 02:00 every night [none: on demand only].')
    parser.add_argument("--timezone", default="UTC", help="Time zone of --cron (IANA name) [UTC].")
    parser.add_argument("--config", default=None, type=Path,
                        help="JSON, TOML or YAML file setting any RunConfig field; becomes the default "
                             "`config` parameter [RunConfig's defaults: FLUX.1-dev + gemini].")
    parser.add_argument("--tiny", action="store_true",
                        help="Start from the CPU smoke-test config (tiny-flux + imagestats, one prompt, "
                             "2 rounds); --config fields override it.")
    parser.add_argument("--limit", type=int, default=None,
                        help="At most this many runs at once in this process [no limit].")
    args = parser.parse_args(argv)
    if args.name is None:
        args.name = TINY_NAME if args.tiny else DEFAULT_NAME
    elif not args.name.strip() or "/" in args.name:
        parser.error(f"--name: received {args.name!r}, allowed: a non-empty deployment name without '/'")
    return args


def build_run_config(args: argparse.Namespace):
    """The deployment's default config, validated up front (a bad file fails here, not at 02:00)."""
    base = dict(TINY_CONFIG) if args.tiny else {}
    from_file = read_config_file(args.config) if args.config else {}
    return build_config(merge(base, from_file))


def pool_owner(name: str) -> str | None:
    """The work pool a deployment `search-dataset/NAME` on the server is already bound to, if any.
    Serving that name here would rewrite that deployment in place: RunnerDeployment.apply updates an
    existing deployment of the same name (its entrypoint, parameters, and pull steps set to none), keeping
    its work pool (prefect 3.9.1, deployments/runner.py `apply`/`_update`, read Dec 2026). This process and
    the pool's worker would then both take its runs, and once this process stops, the worker's runs would
    have lost the pull step that finds the checkout."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return None
    return deployment.work_pool_name or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_run_config(args)
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"serve.py: error: {line}", file=sys.stderr)
        return 2
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Flow runs import `flows.search_dataset` in a subprocess: find it in this checkout, installed or not.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if not os.environ.get("PREFECT_API_URL"):
        print("serve.py: warning: PREFECT_API_URL is not set: Prefect starts a temporary server that lives only "
              "while this process does (no UI at :4200, no scheduler for --cron). Run `prefect server start` and "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api first.", file=sys.stderr)
    else:
        pool = pool_owner(args.name)
        if pool is not None:
            print(f"serve.py: error: --name: received {args.name!r}, but '{FLOW_NAME}/{args.name}' is already "
                  f"deployed on work pool {pool!r} (prefect deploy); serving it here would rewrite that deployment. "
                  f"allowed: a name not deployed on a work pool, e.g. --name {args.name}-serve", file=sys.stderr)
            return 2

    from prefect import serve
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.search_dataset import search_dataset

    # Each run imports the flow from its module in a fresh `python -m prefect.engine`, as a worker does.
    # (search_dataset.serve() would instead pickle the flow function BY VALUE into each run's
    # subprocess, where its `from __future__ import annotations` string annotation `RunConfig` no
    # longer resolves: every run failed with "Search_DatasetModel is not fully defined".)
    deployment = search_dataset.to_deployment(
        name=args.name,
        schedules=[Cron(args.cron, timezone=args.timezone)] if args.cron else None,
        parameters={"config": config.model_dump(mode="json")},
        tags=["ttsf", "serve"],
        description=f"ttsf noise search served by deployments/serve.py ({config.pretrained_model_name_or_path}, "
                    f"{config.verifier_args.name})",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    serve(deployment, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
