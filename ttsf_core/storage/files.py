"""Files: atomic writes, content hashes, and names that are safe whatever text they come from.

Every file ttsf writes appears only once complete (a temp file in the same folder, synced, renamed),
so a crash never leaves half a file and readers never see one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from PIL import Image

# mkstemp makes 0600 files; ours are for sharing (web servers, workers under other accounts), so they
# get what the umask allows, like any other file. Read once, at import, before threads exist.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
TEMP_SUFFIX = ".tmp"
# Temp files are named by their writer (host and pid), so a later run can tell a killed write's
# leftovers from a write still going on in another process or on another machine.
_HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:40] or "host"
_WRITER = f"w_{_HOST}_{os.getpid()}"
_WRITER_PATTERN = re.compile(r"\.w_([A-Za-z0-9-]+)_(\d+)\.[^.]*\.tmp$")
FOREIGN_TEMP_MAX_AGE_S = 3600.0  # another machine's temp file this old is a leftover too


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def safe_slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe ASCII slug: whatever the text says, no separators, dots or control chars."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:max_len].strip("_")
    return slug or "x"


def prompt_dirname(prompt: str) -> str:
    """A prompt's folder name: readable slug plus a hash, unique per prompt text."""
    return f"{safe_slug(prompt)}-{text_hash(prompt)[:10]}"


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` only once fully written: a temp file in the same folder,
    synced, then renamed. Readers never see a partial file; a failure leaves no trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_WRITER}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as temp:
            yield temp
            temp.flush()
            os.fchmod(temp.fileno(), FILE_MODE)
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as temp:
        temp.write(data)


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes; `text` goes into iTXt chunks ahead of the pixels (readable without decoding them)."""
    info = None
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(path: Path, image: Image.Image, text: dict[str, str] | None = None) -> str:
    """Write `image` as PNG atomically; return the sha256 of the bytes written."""
    data = png_bytes(image, text)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def probe_writable(folder: Path) -> None:
    """Create `folder` if missing and write (then remove) a file in it; OSError if this user cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write-probe"
    probe.write_bytes(b"")
    probe.unlink()


def writable_problem(folder: Path) -> str | None:
    """Why this user could not create and write `folder` (its nearest existing ancestor decides), or None;
    nothing is written to find out (a refused input leaves no folder behind)."""
    probe = Path(folder).absolute()
    while not probe.exists():
        if probe.parent == probe:
            return "No such file or directory"
        probe = probe.parent
    if not probe.is_dir():
        return "Not a directory"
    return None if os.access(probe, os.W_OK | os.X_OK) else "Permission denied"


def model_slug(model: str) -> str:
    """How folders name a model: the last part of its hub id or path, made safe ("FLUX_1_dev")."""
    return safe_slug(Path(model).name or "model", 60)


def write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))




def sweep_temp_files(folder: Path) -> int:
    """Remove leftovers of killed writes under `folder`: temp files of this host whose writer process
    is gone, and other hosts' (or unnamed) temp files older than FOREIGN_TEMP_MAX_AGE_S. Returns the
    count removed. Writes in progress are never touched."""
    removed = 0
    if not Path(folder).is_dir():
        return 0
    now = time.time()
    for path in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        match = _WRITER_PATTERN.search(path.name)
        if match and match.group(1) == _HOST:
            stale = not _alive(int(match.group(2)))
        else:
            try:
                stale = now - path.stat().st_mtime > FOREIGN_TEMP_MAX_AGE_S
            except FileNotFoundError:
                continue
        if stale:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
