"""Where cached task results persist: a local folder beside the run unless configured otherwise."""

from __future__ import annotations

from pathlib import Path

from ttsf_core.config import RunConfig

LOCAL_RESULTS_DIRNAME = ".prefect-results"


def result_storage_for(config: RunConfig) -> Path | str:
    """A block slug such as "s3-bucket/results" is passed on (Prefect loads it); anything else is a
    local folder, which Prefect wraps in a LocalFileSystem."""
    configured = config.result_storage
    if configured and _is_block_slug(configured):
        return configured
    folder = Path(configured) if configured else Path(config.output_dir) / LOCAL_RESULTS_DIRNAME
    return folder.resolve()


def _is_block_slug(value: str) -> bool:
    block_type, _, name = value.partition("/")
    return bool(block_type and name) and "/" not in name and not Path(value).exists() \
        and not value.startswith((".", "~")) and block_type.replace("-", "").isalnum()
