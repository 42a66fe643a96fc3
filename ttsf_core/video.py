"""Video candidates: frames -> mp4 bytes (deterministic), mp4 -> frames, and the poster frame.

A video is stored as an mp4 (H.264, yuv420p, through the ffmpeg binary imageio-ffmpeg ships) encoded
with one thread and bit-exact flags, so the same frames always give the same bytes with the same
ffmpeg: `ttsf regenerate` compares a video's bytes as it compares a PNG's. Beside it a poster frame
(PNG, carrying the recipe like any stored image) serves thumbnails and reports. Image verifiers grade
a video through `grade_frames` evenly spaced frames decoded from the mp4.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

VIDEO_SUFFIX = ".mp4"
POSTER_SUFFIX = ".poster.png"
# Visually lossless for graders, deterministic for regeneration.
_X264 = ["-crf", "17", "-preset", "medium", "-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
         "-map_metadata", "-1"]


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() == VIDEO_SUFFIX


def poster_path(path: str | Path) -> Path:
    """The poster frame beside a video (`x.mp4` -> `x.poster.png`); an image is its own poster."""
    path = Path(path)
    return path.with_suffix(POSTER_SUFFIX) if is_video(path) else path


def poster_frame(frames: list[Image.Image]) -> Image.Image:
    """The frame a thumbnail shows: the middle one."""
    return frames[len(frames) // 2]


def mp4_bytes(frames: list[Image.Image], fps: int) -> bytes:
    """The frames as an H.264 mp4: the same frames and fps give the same bytes."""
    import imageio_ffmpeg

    if not frames:
        raise ValueError("a video needs at least one frame")
    width, height = frames[0].size
    with tempfile.TemporaryDirectory(prefix="ttsf-video-") as folder:
        path = Path(folder) / "video.mp4"
        writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", quality=None,
                                             pix_fmt_out="yuv420p", macro_block_size=2, output_params=_X264,
                                             ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(frame.convert("RGB").tobytes())
        writer.close()
        return path.read_bytes()


def read_frames(path: str | Path) -> list[Image.Image]:
    """Every frame of a video, decoded to RGB."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    size = tuple(meta["size"])
    try:
        return [Image.frombytes("RGB", size, bytes(frame)) for frame in reader]
    finally:
        reader.close()


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """`wanted` frame indices spread over `count` frames, first and last included (all when fewer)."""
    if count <= wanted:
        return list(range(count))
    if wanted == 1:
        return [count // 2]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def grading_frames(path: str | Path, wanted: int) -> tuple[list[int], list[Image.Image]]:
    """The evenly spaced frames image verifiers grade a video by, and their indices."""
    frames = read_frames(path)
    indices = evenly_spaced(len(frames), wanted)
    return indices, [frames[index] for index in indices]
