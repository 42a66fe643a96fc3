"""Where cached task results persist: a local folder beside the run unless configured otherwise."""

from __future__ import annotations

from pathlib import Path

from prefect.filesystems import LocalFileSystem

from ttsf_core.config import RunConfig

LOCAL_RESULTS_DIRNAME = ".prefect-results"


def result_storage_for(config: RunConfig):
    """A Prefect result storage: a block slug ("s3-bucket/name") is loaded, a path is a local folder."""
    if config.result_storage and "/" in config.result_storage and not Path(config.result_storage).exists() \
            and not config.result_storage.startswith(("/", ".")):
        return config.result_storage  # Prefect resolves "block-type/block-name" slugs itself
    folder = Path(config.result_storage) if config.result_storage else Path(config.output_dir) / LOCAL_RESULTS_DIRNAME
    return LocalFileSystem(basepath=str(folder.resolve()))
