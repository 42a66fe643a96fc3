"""Prompts from one `--prompt`, a local .txt/.csv/.jsonl/.parquet file, or a hub dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ttsf_core.config import MAX_PROMPT_CHARS, PROMPT_ALLOWED, ConfigError, PromptSource, prompt_problem

if TYPE_CHECKING:
    import pandas as pd

LOCAL_SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class PromptRead:
    """The prompts to search, and how many usable prompts the dataset holds (None: not counted, a hub
    dataset is streamed only as far as needed)."""

    prompts: list[str]
    available: int | None


def load_prompts(source: PromptSource) -> list[str]:
    """The prompts to search, in dataset order, each exactly as the dataset has it: blank ones skipped,
    duplicates kept once, and a prompt ttsf could only search by changing it (a control character)
    refused with its place in the dataset."""
    return read_prompts(source).prompts


def read_prompts(source: PromptSource) -> PromptRead:
    if source.prompt is not None:
        return PromptRead([source.prompt], 1)
    limit = None if source.num_prompts == "all" else source.num_prompts
    local = _looks_local(source.dataset)
    texts = _read_local(source) if local else _read_hub(source, limit)
    prompts: dict[str, None] = {}
    for place, text in texts:
        if not isinstance(text, str) or not text.strip():
            continue  # an empty cell or a blank line is not a prompt
        problem = prompt_problem(text)
        if problem is not None:
            allowed = f"prompts of at most {MAX_PROMPT_CHARS} characters" if len(text) > MAX_PROMPT_CHARS else \
                f"prompts that are {PROMPT_ALLOWED}"
            raise ConfigError(f"prompts.dataset: received {source.dataset!r} ({place}: {problem}; ttsf searches "
                              f"a prompt exactly as given, or not at all), allowed: {allowed}")
        prompts.setdefault(text)
    if not prompts:
        raise ConfigError(f"prompts.dataset: received {source.dataset!r} (it holds no non-empty prompts), "
                          "allowed: a dataset with at least one non-empty prompt")
    found = list(prompts)
    return PromptRead(found[:limit] if limit else found, len(found) if local else None)


def count_note(source: PromptSource, read: PromptRead) -> str | None:
    """"2 of 5 prompts ..." when a dataset's prompts are not all searched (tt-scale-flux's default
    --num_prompts is 2): said, so that nobody thinks the whole dataset ran."""
    if source.prompt is not None or source.num_prompts == "all":
        return None
    count = len(read.prompts)
    if read.available is None:
        return (f"searching the first {count} prompts of {source.dataset!r} (--num_prompts {source.num_prompts}; "
                "--num_prompts all for every one)")
    if count < read.available:
        return (f"searching {count} of the {read.available} prompts of {source.dataset!r} (the first {count}; "
                "--num_prompts all for every one)")
    return None


def _looks_local(dataset: str) -> bool:
    return Path(dataset).suffix.lower() in LOCAL_SUFFIXES or Path(dataset).exists()


def _read_local(source: PromptSource) -> list[tuple[str, object]]:
    """(where, text) for every entry of a local file: "line N" of a .txt, "row N" of a table."""
    path = Path(source.dataset)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in LOCAL_SUFFIXES:
        raise ConfigError(
            f"prompts.dataset: received {source.dataset!r}, allowed: a readable {'/'.join(LOCAL_SUFFIXES)} file or a "
            "hub dataset id"
        )
    try:
        if suffix == ".txt":
            return [(f"line {number}", line) for number, line in enumerate(_lines(path), start=1)]
        import pandas as pd  # here: a --prompt or a .txt does without its second of import

        frame = {
            # dtype str, no NA words: a prompt "1984" or "NA" stays the text it is.
            ".csv": lambda: pd.read_csv(path, dtype=str, keep_default_na=False),
            # dtype/convert_dates off: a prompt "1984" or "2024-01-01" stays the text it is.
            ".jsonl": lambda: pd.read_json(path, lines=True, dtype=False, convert_dates=False),
            ".parquet": lambda: _read_parquet_column(path, source),
        }[suffix]()
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as error:
        raise ConfigError(f"prompts.dataset: received {source.dataset!r} (it could not be read: "
                          f"{_first_line(error)}), allowed: a readable {suffix} file") from None
    return [(f"row {number} ({source.prompt_column})", text)
            for number, text in enumerate(_column(frame, source), start=1)]


def _lines(path: Path) -> list[str]:
    """A text file's lines without their terminators (LF or CRLF): nothing else is taken from a prompt
    (str.splitlines would also cut at form feeds and Unicode line separators inside one)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_parquet_column(path: Path, source: PromptSource) -> pd.DataFrame:
    import pandas as pd
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
        return [(f"row {number} ({source.prompt_column})", row[source.prompt_column])
                for number, row in enumerate(rows, start=1)]
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
    from ttsf_core.storage.files import atomic_write_bytes

    label = prompt_source_label(source) if source is not None else "prompts"
    path = Path(run_dir) / PROMPT_LISTS_DIRNAME / f"{label}--{digest(prompts, 16)}.jsonl"
    if not path.is_file():
        lines = "".join(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n" for prompt in prompts)
        atomic_write_bytes(path, lines.encode("utf-8"))
    return path


def prompt_source_label(source: PromptSource) -> str:
    """What a person calls these prompts: `<prompt>-1p`, `<dataset>-<N>p` or `<dataset>-all`; a saved
    prompt list keeps the label of the source it was saved from."""
    from ttsf_core.storage.files import safe_slug

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
