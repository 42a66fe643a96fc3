"""Prompts from one `--prompt`, a local .txt/.csv/.jsonl/.parquet file, or a hub dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ttsf_core.config import MAX_PROMPT_CHARS, ConfigError, PromptSource, clean_prompt

LOCAL_SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")


def load_prompts(source: PromptSource) -> list[str]:
    """The prompts to search, in dataset order: control characters removed, blank ones dropped,
    duplicates kept once."""
    if source.prompt is not None:
        return [source.prompt]
    limit = None if source.num_prompts == "all" else source.num_prompts
    if _looks_local(source.dataset):
        texts = _read_local(source, limit)
    else:
        texts = _read_hub(source, limit)
    cleaned = (clean_prompt(text) for text in texts if isinstance(text, str))
    prompts = list(dict.fromkeys(text for text in cleaned if text))
    too_long = next((text for text in prompts if len(text) > MAX_PROMPT_CHARS), None)
    if too_long is not None:
        raise ConfigError(f"prompts.dataset: received {source.dataset!r} (prompt {prompts.index(too_long)} has "
                          f"{len(too_long)} characters), allowed: prompts of at most {MAX_PROMPT_CHARS} characters")
    if not prompts:
        raise ConfigError(f"prompts.dataset: received {source.dataset!r} (it holds no non-empty prompts), "
                          "allowed: a dataset with at least one non-empty prompt")
    return prompts[:limit] if limit else prompts


def _looks_local(dataset: str) -> bool:
    return Path(dataset).suffix.lower() in LOCAL_SUFFIXES or Path(dataset).exists()


def _read_local(source: PromptSource, limit: int | None) -> list:
    path = Path(source.dataset)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in LOCAL_SUFFIXES:
        raise ConfigError(
            f"prompts.dataset: received {source.dataset!r}, allowed: a readable {'/'.join(LOCAL_SUFFIXES)} file or a "
            "hub dataset id"
        )
    try:
        if suffix == ".txt":
            return path.read_text(encoding="utf-8").splitlines()
        frame = {
            ".csv": lambda: pd.read_csv(path),
            # dtype/convert_dates off: a prompt "1984" or "2024-01-01" stays the text it is.
            ".jsonl": lambda: pd.read_json(path, lines=True, dtype=False, convert_dates=False),
            ".parquet": lambda: _read_parquet_column(path, source),
        }[suffix]()
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as error:
        raise ConfigError(f"prompts.dataset: received {source.dataset!r} (it could not be read: "
                          f"{_first_line(error)}), allowed: a readable {suffix} file") from None
    return _column(frame, source)


def _read_parquet_column(path: Path, source: PromptSource) -> pd.DataFrame:
    import pyarrow.parquet as pq

    # Read the one column: preference datasets carry image columns far larger than the prompts.
    names = pq.read_schema(path).names
    if source.prompt_column not in names:
        return pd.DataFrame(columns=names)
    return pd.read_parquet(path, columns=[source.prompt_column])


def _column(frame: pd.DataFrame, source: PromptSource) -> list:
    if source.prompt_column not in frame.columns:
        raise ConfigError(
            f"prompts.prompt_column: received {source.prompt_column!r}, allowed: one of {', '.join(map(str, frame.columns))}"
        )
    return frame[source.prompt_column].tolist()


def _read_hub(source: PromptSource, limit: int | None) -> list:
    import datasets

    try:
        # Streaming reads only the rows needed; the prompt column alone avoids decoding images.
        stream = datasets.load_dataset(source.dataset, split=source.dataset_split, streaming=True)
        if source.prompt_column not in (stream.column_names or [source.prompt_column]):
            raise ConfigError(
                f"prompts.prompt_column: received {source.prompt_column!r}, allowed: one of {', '.join(stream.column_names)}"
            )
        rows = stream.select_columns([source.prompt_column])
        rows = rows.take(limit * 2) if limit else rows  # head-room for blank or repeated prompts
        return [row[source.prompt_column] for row in rows]
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - the hub raises many types; all mean "unreadable"
        raise ConfigError(
            f"prompts.dataset: received {source.dataset!r} (it could not be loaded: {type(error).__name__}: "
            f"{_first_line(error)}), allowed: a reachable hub dataset id or a local {'/'.join(LOCAL_SUFFIXES)} file"
        ) from None


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "no detail")


def prompt_warnings(source: PromptSource, prompts: list[str]) -> list[str]:
    """What the user asked for that the prompts cannot give (not an error: the run goes on)."""
    if isinstance(source.num_prompts, int) and source.num_prompts > len(prompts):
        return [f"--num_prompts (prompts.num_prompts): asked for {source.num_prompts}, the dataset "
                f"{source.dataset!r} holds {len(prompts)} usable prompts: searching those {len(prompts)}"]
    return []


PROMPT_LISTS_DIRNAME = "prompt-lists"


def save_prompt_list(run_dir: Path, prompts: list[str], source: PromptSource | None = None) -> Path:
    """Write the run's prompts once, named by where they came from and their hash, as a JSONL dataset:
    flows are then given its path, never the texts (Prefect refuses large parameters; a dataset is
    read once per run)."""
    import json

    from ttsf_core.config import digest
    from ttsf_core.files import atomic_write_bytes

    label = prompt_source_label(source) if source is not None else "prompts"
    path = Path(run_dir) / PROMPT_LISTS_DIRNAME / f"{label}--{digest(prompts, 16)}.jsonl"
    if not path.is_file():
        lines = "".join(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n" for prompt in prompts)
        atomic_write_bytes(path, lines.encode("utf-8"))
    return path


def prompt_source_label(source: PromptSource) -> str:
    """What a person calls these prompts: `<prompt>-1p`, `<dataset>-<N>p` or `<dataset>-all`; a saved
    prompt list keeps the label of the source it was saved from."""
    from ttsf_core.files import safe_slug

    if source.prompt is not None:
        return f"{safe_slug(source.prompt, 30)}-1p".replace("_", "-").lower()
    path = Path(source.dataset.rstrip("/"))
    if path.parent.name == PROMPT_LISTS_DIRNAME and "--" in path.stem:
        return path.stem.rpartition("--")[0]
    count = "all" if source.num_prompts == "all" else f"{source.num_prompts}p"
    name = path.name.rsplit(".", 1)[0] if path.suffix.lower() in LOCAL_SUFFIXES else path.name
    return f"{safe_slug(name, 40)}-{count}".replace("_", "-").lower()


def prompt_list_source(path: Path) -> PromptSource:
    """A saved prompt list as a prompt source: every prompt, in order."""
    return PromptSource(dataset=str(path), prompt_column="prompt", num_prompts="all")


def read_prompt_list(path: str | Path) -> list[str]:
    from ttsf_core.config import digest

    prompts = load_prompts(prompt_list_source(Path(path)))
    if Path(path).stem.rpartition("--")[2] != digest(prompts, 16):
        raise ValueError(f"prompt list {path} does not match its name: it was changed after it was written")
    return prompts
