"""Where Prefect persists batch summaries: a local folder beside the run unless configured otherwise.

Checked before anything runs: a folder must be writable, a block slug must name an existing block
(an unusable storage would otherwise be found by the first batch, after the model loaded).
"""

from __future__ import annotations

from pathlib import Path

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.storage.files import probe_writable

LOCAL_RESULTS_DIRNAME = ".prefect-results"


def result_storage_for(config: RunConfig) -> Path | str:
    """A block slug such as "s3-bucket/results" is passed on (Prefect loads it); anything else is a
    local folder, which Prefect wraps in a LocalFileSystem."""
    configured = config.result_storage
    if configured and is_block_slug(configured):
        return configured
    folder = Path(configured) if configured else Path(config.output_dir) / LOCAL_RESULTS_DIRNAME
    return folder.resolve()


def is_block_slug(value: str) -> bool:
    block_type, _, name = value.partition("/")
    return bool(block_type and name) and "/" not in name and not Path(value).exists() \
        and not value.startswith((".", "~")) and block_type.replace("-", "").isalnum()


def check_result_storage(config: RunConfig) -> None:
    """A ConfigError unless the result storage can be written (folder) or loaded (block)."""
    storage = result_storage_for(config)
    if isinstance(storage, str):
        _check_block(storage)
        return
    try:
        probe_writable(storage)
    except OSError as error:
        raise ConfigError(f"result_storage: received {str(config.result_storage or storage)!r} ({error.strerror}), "
                          "allowed: a folder this user can write, or a Prefect storage block slug") from None


def _check_block(slug: str) -> None:
    from prefect.blocks.core import Block

    try:
        Block.load(slug)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"result_storage: received {slug!r} (no such block: {error}), allowed: an existing "
                          "storage block ('prefect block ls' lists them) or a writable folder") from None
