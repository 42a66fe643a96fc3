"""Turn a run folder's round records into tables, an HTML page, a scaling curve, collages and a zip.

Everything is rebuilt from the records on disk alone, so a report can be made for any run folder -
finished, half-finished or copied elsewhere - without the config, the model or the verifier.
"""

from __future__ import annotations

import base64
import html
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from ttsf_core.storage.files import atomic_write_bytes, atomic_writer, png_bytes, safe_slug, text_hash, write_json
from ttsf_core.storage.records import RECORD_GLOB, CandidateRecord, RoundRecord, iter_round_records, resolve_image
from ttsf_core.verifiers.base import METRIC_NAMES
from ttsf_core.video import VIDEO_SUFFIX, is_video, poster_path

# pandas (0.7-1.1 s to import on the VM of BENCHMARKS.md) is imported where a table is made: a finished
# run's re-run checks its report's stamp and prints its summary from report/.summary.json without it.
if TYPE_CHECKING:
    import pandas as pd

REPORT_DIRNAME = "report"
BASE_COLUMNS: tuple[str, ...] = (
    "prompt_index",
    "prompt",
    "search_round",
    "search_method",
    "num_noises",
    "images_generated",
    "nfe",
    "nfe_so_far",
    "best_score",
    "best_so_far",
    "best_noise_seed",
    "best_noise",
    "best_index",
    "choice_of_metric",
    "best_img_path",
    "ungradeable",
    # Grades the round asked: of the run's verifier, and of --path_verifier (a search on the denoising
    # path's intermediate images); NaN for records written before ttsf counted them.
    "verifier_calls",
    "path_verifier_calls",
    # What grading the round's new images cost (an image already graded in an earlier round of the
    # prompt, a carried zero-order pivot, is counted there): billed requests, tokens, dollars at the
    # prices of the day each grade was made (NaN when a model had no price), and the models that answered
    # with their requests ("gemini-3.8-flash:16").
    "verifier_requests",
    "prompt_tokens",
    "image_tokens",
    "thought_tokens",
    "output_tokens",
    "verifier_cost_usd",
    "verifier_cost_so_far",
    "model_versions",
)
# Then one column per metric the verifier scores (the rubric's six aspects for VLM graders).
COLUMNS: tuple[str, ...] = BASE_COLUMNS + METRIC_NAMES
THUMBNAIL_PX = 160
# Zip entries carry a timestamp; a fixed one makes the archive byte-identical across rebuilds.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ReportFiles:
    """The paths `build_report` wrote."""

    folder: Path
    parquet: Path
    csv: Path
    html: Path
    scaling_curve: Path
    best_images_zip: Path
    collages: tuple[Path, ...]


# ---------------------------------------------------------------- the table


def report_dataframe(run_dir: str | Path) -> pd.DataFrame:
    """One row per (prompt, round): the round's best datapoint, with cumulative cost and best-so-far."""
    run_dir = Path(run_dir)
    found = iter_round_records(run_dir)
    if not found:
        raise ValueError(f"no round records under {run_dir} (looked for {run_dir}/prompts/*/round_*.json)")
    rows = [_row(path, record) | cost for (path, record), cost in zip(found, _round_costs([r for _, r in found]))]
    metrics = list(dict.fromkeys(name for row in rows for name in row if name not in BASE_COLUMNS))
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(BASE_COLUMNS) + metrics)
    _check_unique_rounds(frame, run_dir)
    # A zero-order pivot carried over from the round before is the same image: counted once.
    frame["images_generated"] = _distinct_images_so_far([record for _, record in found])
    frame = frame.sort_values(["prompt_index", "search_round"], kind="stable").reset_index(drop=True)
    by_prompt = frame.groupby("prompt_index", sort=False)
    frame["nfe_so_far"] = by_prompt["nfe"].cumsum()
    for column in ("best_noise_seed", "best_index"):  # 63-bit seeds stay exact; a missing best is <NA>
        frame[column] = frame[column].astype("Int64")
    frame["best_so_far"] = by_prompt["best_score"].cummax()
    frame["verifier_cost_so_far"] = by_prompt["verifier_cost_usd"].cumsum(skipna=False)
    frame["model_versions"] = frame["model_versions"].astype("str")
    return frame


def _row(path: Path, record: RoundRecord) -> dict:
    best = _best_candidate(path, record)
    return {
        "prompt_index": record.prompt_index,
        "prompt": record.prompt,
        "search_round": record.search_round,
        "search_method": record.search_method,
        "num_noises": record.num_noises,
        "images_generated": 0,  # distinct images of the prompt's search so far, filled below
        "nfe": record.nfe if record.nfe is not None else float("nan"),
        "nfe_so_far": 0,
        "best_score": float(record.best_score) if record.best_score is not None else float("nan"),
        "best_so_far": 0.0,
        # Nullable: a round none of whose images could be graded has no best.
        "best_noise_seed": record.best_noise_seed,
        "best_noise": best.noise.tag() if best else "",
        "best_index": record.best_index,
        "choice_of_metric": record.choice_of_metric,
        # Relative to the report folder, so the report works wherever the output folder is moved or read.
        "best_img_path": _from_report(path, record.best_img_path) if best else "",
        "ungradeable": record.ungradeable,
        "verifier_calls": record.verifier_calls if record.verifier_calls is not None else float("nan"),
        "path_verifier_calls": record.path_verifier_calls if record.path_verifier_calls is not None else float("nan"),
        **(best.grades.scores() if best and best.grades else {}),
    }


def _round_costs(records: list[RoundRecord]) -> list[dict]:
    """For each record (in prompt, round order): what grading its prompt's images new in this round cost."""
    seen: dict[int, set] = {}
    costs = []
    for record in records:
        graded = seen.setdefault(record.prompt_index, set())
        new = [c for c in record.candidates if c.image_sha256 not in graded]
        graded.update(c.image_sha256 for c in new)
        usage = [entry for candidate in new for entry in candidate.usage]
        unpriced = any(candidate.usage and candidate.cost_usd is None for candidate in new)
        costs.append({
            "verifier_requests": sum(entry.requests for entry in usage),
            **{name: sum(getattr(entry, name) for entry in usage) for name in _TOKEN_COLUMNS},
            "verifier_cost_usd": float("nan") if unpriced else round(sum(c.cost_usd or 0.0 for c in new), 9),
            "verifier_cost_so_far": 0.0,
            "model_versions": _versions_text(usage),
        })
    return costs


_TOKEN_COLUMNS = ("prompt_tokens", "image_tokens", "thought_tokens", "output_tokens")


def _versions_text(usage) -> str:
    """"model:requests, ..." for the models that answered (sorted by name)."""
    counts: dict[str, int] = {}
    for entry in usage:
        counts[entry.billed_model] = counts.get(entry.billed_model, 0) + entry.requests
    return ", ".join(f"{name}:{count}" for name, count in sorted(counts.items())) or None


def cost_summary(frame: pd.DataFrame) -> dict:
    """A run's grading cost: requests, tokens, dollars (None when some model had no price), the models
    that answered with their requests, and the dollars per point of best score gained after round 1."""
    priced = bool(frame["verifier_cost_usd"].notna().all())
    total = round(float(frame["verifier_cost_usd"].sum()), 9) if priced else None
    versions: dict[str, int] = {}
    for text in frame["model_versions"].dropna():
        for item in filter(None, str(text).split(", ")):
            name, _, count = item.rpartition(":")
            versions[name] = versions.get(name, 0) + int(count)
    by_prompt = frame.sort_values("search_round").groupby("prompt_index")
    first, last = by_prompt.first(), by_prompt.last()
    gain = float((last["best_so_far"] - first["best_score"]).sum())
    after_first = float((last["verifier_cost_so_far"] - first["verifier_cost_so_far"]).sum()) if priced else None
    return {"requests": int(frame["verifier_requests"].sum()),
            **{name: int(frame[name].sum()) for name in _TOKEN_COLUMNS},
            "cost_usd": total, "model_versions": versions,
            "usd_per_point": (round(after_first / gain, 6) if after_first is not None and gain > 0 else None),
            "points_gained": round(gain / max(frame["prompt_index"].nunique(), 1), 6)}


def cost_lines(frame: pd.DataFrame) -> list[str]:
    """The cost summary in plain sentences (terminal, markdown and HTML alike)."""
    found = cost_summary(frame)
    if not found["requests"]:
        return []
    cost = "unknown (a model without a price: add it to the config's prices)" if found["cost_usd"] is None \
        else f"${found['cost_usd']:.4f}"
    lines = [f"Grading cost: {found['requests']} verifier requests, {found['prompt_tokens']:,} prompt tokens "
             f"({found['image_tokens']:,} of them images), {found['thought_tokens']:,} thought and "
             f"{found['output_tokens']:,} answer tokens: {cost}."]
    if found["usd_per_point"] is not None:
        lines.append(f"After round 1: ${found['usd_per_point']:.4f} per point of best score gained "
                     f"({found['points_gained']:+.3f} points a prompt).")
    if len(found["model_versions"]) > 1:
        shown = ", ".join(f"{name} ({count} requests)" for name, count in found["model_versions"].items())
        lines.append(f"Warning: the grades come from {len(found['model_versions'])} model versions ({shown}): an "
                     "alias moved during the run, so its scores are not all comparable.")
    return lines


def _from_report(record_path: Path, img_path: str) -> str:
    """A record's image as the report names it: relative to RUN_DIR/report (run_dir is two folders
    above the record's: prompts/<prompt>/round_NN.json)."""
    image = resolve_image(record_path, img_path).absolute()
    report = Path(record_path).absolute().parents[2] / REPORT_DIRNAME
    return Path(os.path.relpath(image, report)).as_posix()


def report_image(run_dir: str | Path, best_img_path: str) -> Path:
    """The file a report row's `best_img_path` names (relative to RUN_DIR/report)."""
    return Path(os.path.normpath(Path(run_dir) / REPORT_DIRNAME / best_img_path))


def _with_files(frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The frame with best_img_path as paths to open from here (for the zip, collages and page)."""
    found = frame.copy()
    found["best_img_path"] = [str(report_image(run_dir, path)) if path else "" for path in frame["best_img_path"]]
    return found


def _distinct_images_so_far(records: list[RoundRecord]) -> list[int]:
    """For each record (in prompt, round order): distinct images of its prompt's rounds up to it."""
    seen: dict[int, set] = {}
    counts = []
    for record in records:
        images = seen.setdefault(record.prompt_index, set())
        images.update((c.noise.tag(), c.steps) for c in record.candidates)
        counts.append(len(images))
    return counts


def _best_candidate(path: Path, record: RoundRecord) -> CandidateRecord | None:
    if record.best_index is None:
        return None
    for candidate in record.candidates:
        if candidate.index == record.best_index:
            return candidate
    indices = [candidate.index for candidate in record.candidates]
    raise ValueError(f"round record {path}: best_index {record.best_index} is not among candidate indices {indices}")


def _check_unique_rounds(frame: pd.DataFrame, run_dir: Path) -> None:
    # Two records for one (prompt, round) would silently collide in the zip and the collages.
    dupes = frame[frame.duplicated(["prompt_index", "search_round"], keep=False)]
    if not dupes.empty:
        pairs = sorted(set(zip(dupes["prompt_index"], dupes["search_round"])))
        raise ValueError(f"run folder {run_dir} holds several records for (prompt_index, search_round) {pairs}")


# ---------------------------------------------------------------- the files


STAMP_NAME = ".sources.json"


def build_report(run_dir: str | Path, only_if_changed: bool = False) -> ReportFiles | None:
    """Write report.parquet/.csv/.html, scaling_curve.png, collages/ and best_images.zip under
    run_dir/report. With `only_if_changed`, nothing is rewritten (and None returned) when the
    records are the ones the report was last built from."""
    run_dir = Path(run_dir)
    folder = run_dir / REPORT_DIRNAME
    sources = _record_digests(run_dir)
    stamp = folder / STAMP_NAME
    if only_if_changed and stamp.is_file() and _read_json(stamp) == sources and (folder / "report.html").is_file():
        return None
    frame = report_dataframe(run_dir)
    parquet, csv, page = folder / "report.parquet", folder / "report.csv", folder / "report.html"
    curve_path, zip_path = folder / "scaling_curve.png", folder / "best_images.zip"
    atomic_write_bytes(parquet, _parquet_bytes(frame))
    atomic_write_bytes(csv, frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    curve = scaling_curve_png(frame)
    atomic_write_bytes(curve_path, curve)
    files = _with_files(frame, run_dir)
    collages = tuple(_write_collage(folder / "collages", rounds) for _, rounds in files.groupby("prompt_index", sort=True))
    _write_best_images_zip(zip_path, files)
    atomic_write_bytes(page, report_html(files, run_dir, curve).encode("utf-8"))
    write_json(stamp, sources)
    return ReportFiles(folder, parquet, csv, page, curve_path, zip_path, collages)


SUMMARY_NAME = ".summary.json"


def summary_lines(run_dir: str | Path) -> list[str]:
    """What `ttsf run` prints after a search: prompts, metric and method, each round's images, NFEs and
    mean best score, then the cost and allocation lines. Kept in report/.summary.json with the digests of
    the records (and allocation.json) it was made from: a re-run with nothing new prints it as kept, and
    so never imports pandas."""
    run_dir = Path(run_dir)
    sources = _summary_sources(run_dir)
    path = run_dir / REPORT_DIRNAME / SUMMARY_NAME
    kept = _read_json(path) if path.is_file() else None
    if isinstance(kept, dict) and kept.get("sources") == sources and isinstance(kept.get("lines"), list):
        return [str(line) for line in kept["lines"]]
    lines = _summary_lines(report_dataframe(run_dir), run_dir)
    try:
        write_json(path, {"sources": sources, "lines": lines})
    except OSError:
        pass  # a folder this user cannot write: the summary is made from the records again next time
    return lines


def _summary_sources(run_dir: Path) -> dict[str, str]:
    from ttsf_core.allocation import ALLOCATION_FILENAME

    sources = _record_digests(run_dir)
    allocation = run_dir / ALLOCATION_FILENAME
    if allocation.is_file():
        sources[ALLOCATION_FILENAME] = text_hash(allocation.read_text(encoding="utf-8"))
    return sources


def _summary_lines(frame: pd.DataFrame, run_dir: Path) -> list[str]:
    from ttsf_core.allocation import allocation_lines

    by_round = frame.groupby("search_round").agg(images=("images_generated", "mean"), nfe=("nfe_so_far", "mean"),
                                                 mean_best=("best_score", "mean"))
    prompts = frame["prompt_index"].nunique()
    lines = [f"{prompts} prompt{'s' * (prompts != 1)}, metric {frame['choice_of_metric'].iloc[0]}, "
             f"search {frame['search_method'].iloc[0]}"]
    for search_round, row in by_round.iterrows():
        lines.append(f"  round {search_round}: {row['images']:g} images ({row['nfe']:g} NFEs) a prompt so far, "
                     f"mean best score {row['mean_best']:.3f}")
    return lines + cost_lines(frame) + allocation_lines(frame, run_dir)


def _record_digests(run_dir: Path) -> dict[str, str]:
    return {path.relative_to(run_dir).as_posix(): text_hash(path.read_text(encoding="utf-8"))
            for path in sorted(run_dir.glob(RECORD_GLOB))}


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_collage(folder: Path, rounds: pd.DataFrame) -> Path:
    first = rounds.iloc[0]
    path = folder / f"p{int(first['prompt_index']):04d}_{safe_slug(str(first['prompt']))}.png"
    atomic_write_bytes(path, png_bytes(collage(rounds)))
    return path


def _zip_name(row) -> str:
    suffix = VIDEO_SUFFIX if is_video(row.best_img_path) else ".png"
    return f"p{row.prompt_index:04d}_r{row.search_round:02d}_s{row.best_noise_seed}{suffix}"


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _write_best_images_zip(path: Path, frame: pd.DataFrame) -> None:
    # Streamed to the temp file rather than built in memory: a dataset-sized run has thousands of
    # full-size PNGs.
    with atomic_writer(path) as temp:
        # PNGs are already compressed; storing keeps the build fast and the bytes identical.
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
            for row in frame[frame["best_img_path"] != ""].itertuples(index=False):
                info = zipfile.ZipInfo(_zip_name(row), date_time=ZIP_DATE_TIME)
                info.external_attr = 0o644 << 16
                archive.writestr(info, Path(row.best_img_path).read_bytes())


# ---------------------------------------------------------------- pictures


def scaling_curve_png(frame: pd.DataFrame) -> bytes:
    """Mean best score and mean best-so-far per round against the cumulative cost per prompt: denoiser
    evaluations (NFEs, which compare strategies and drafts fairly) or, for older records, images."""
    # matplotlib (~1 s to import) only when a curve is drawn: a re-run with nothing new reports without it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_round = _per_round_means(frame)
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)  # explicit Agg: never touch pyplot's global backend from a library
    axes = figure.add_subplot()
    by_nfe = bool(per_round["nfe_so_far"].notna().all())
    x = per_round["nfe_so_far" if by_nfe else "images_generated"]
    # The best so far is drawn first, wide and pale, and the round's best over it, thin and dark: where
    # the two coincide (every round improving) both stay visible.
    axes.plot(x, per_round["best_so_far"], marker="s", markersize=9, linewidth=5, alpha=0.35, color="tab:orange",
              label="mean best so far", zorder=2)
    axes.plot(x, per_round["best_score"], marker="o", linewidth=1.5, color="tab:blue",
              label="mean best score of the round", zorder=3)
    for search_round, x_value, y_value in zip(per_round.index, x, per_round["best_so_far"]):
        axes.annotate(f"r{search_round}", (x_value, y_value), textcoords="offset points", xytext=(0, 8), ha="center")
    axes.set_xlabel("denoiser evaluations (NFEs) per prompt" if by_nfe else "images generated per prompt")
    axes.set_ylabel(f"best {_metric_label(frame)}")
    prompts = frame["prompt_index"].nunique()
    axes.set_title(f"inference-time scaling ({prompts} prompt{'s' * (prompts != 1)})")
    axes.margins(y=0.15)  # room for the round labels above the points
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    # Without the Software stamp the PNG does not change with the matplotlib version.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _per_round_means(frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["images_generated", "nfe_so_far", "best_score", "best_so_far"]
    means = frame.groupby("search_round", sort=True)[columns].mean()
    means["prompts"] = frame.groupby("search_round", sort=True)["prompt_index"].nunique()
    return means


def _metric_label(frame: pd.DataFrame) -> str:
    return " / ".join(sorted(frame["choice_of_metric"].unique()))


def collage(rounds: pd.DataFrame) -> Image.Image:
    """One prompt's round winners side by side, each over a caption strip 'round r · score s' (a round
    without a gradeable image: a grey tile captioned 'ungradeable')."""
    rounds = rounds.reset_index(drop=True)
    graded = [_load_rgb(path) for path in rounds["best_img_path"] if path]
    blank = Image.new("RGB", graded[0].size if graded else (64, 64), "#bbbbbb")
    images = [_load_rgb(path) if path else blank for path in rounds["best_img_path"]]
    font_px = min(max(min(image.width for image in images) // 16, 9), 32)
    font = _caption_font(font_px)
    height = max(image.height for image in images)
    strip = 2 * int(font_px * 1.3) + 8  # room for two lines when one does not fit a small tile
    sheet = Image.new("RGB", (sum(image.width for image in images), height + strip), "white")
    draw = ImageDraw.Draw(sheet)
    left = 0
    for image, row in zip(images, rounds.itertuples(index=False)):
        sheet.paste(image, (left, 0))
        caption = f"round {row.search_round} · " + (f"score {row.best_score:.2f}" if row.best_img_path else "ungradeable")
        if draw.textlength(caption, font=font) > image.width - 6:
            caption = caption.replace(" · ", "\n")
        # Clip to the tile so a long caption never spills onto its neighbour.
        tile = Image.new("RGB", (image.width, strip), "white")
        ImageDraw.Draw(tile).multiline_text((3, 4), caption, fill="black", font=font, spacing=2)
        sheet.paste(tile, (left, height))
        left += image.width
    return sheet


def _caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _load_rgb(path: str | Path) -> Image.Image:
    """An image, or a video's poster frame."""
    with Image.open(poster_path(path)) as image:
        return image.convert("RGB")


def thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL_PX) -> str:
    """A JPEG thumbnail (longest side `size`) as a data URI: an image that needs no file server."""
    image = _load_rgb(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------- html and markdown


def report_html(frame: pd.DataFrame, run_dir: Path, curve_png: bytes) -> str:
    """A self-contained page: every image is an embedded data URI, so the file can be mailed alone."""
    esc = html.escape
    rounds = sorted(frame["search_round"].unique().tolist())
    head = "".join(f"<th>round {r}</th>" for r in rounds)
    body = "\n".join(_html_prompt_row(prompt_rows, rounds) for _, prompt_rows in frame.groupby("prompt_index", sort=True))
    curve = "data:image/png;base64," + base64.b64encode(curve_png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ttsf report - {esc(run_dir.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: center; }}
td.prompt {{ text-align: left; max-width: 28em; white-space: pre-wrap; }}
.meta {{ font-size: 0.85em; color: #333; }}
</style></head><body>
<h1>ttsf report</h1>
<p class="meta">run folder: <code>{esc(str(run_dir.absolute()))}</code> · metric: {esc(_metric_label(frame))} ·
prompts: {frame["prompt_index"].nunique()}</p>
{_html_costs(frame, run_dir)}
<h2>Scaling curve</h2>
<img src="{curve}" alt="scaling curve">
<h2>Best image per round</h2>
<table>
<thead><tr><th>#</th><th>prompt</th>{head}<th>best so far</th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


def _html_costs(frame: pd.DataFrame, run_dir: Path) -> str:
    from ttsf_core.allocation import allocation_lines

    found = ""
    if cost_lines(frame):
        found += "<h2>What grading cost</h2>\n" + "\n".join(f"<p>{html.escape(line)}</p>" for line in cost_lines(frame))
    if allocation_lines(frame, run_dir):
        found += "\n<h2>Where the budget went</h2>\n" + "\n".join(
            f"<p>{html.escape(line)}</p>" for line in allocation_lines(frame, run_dir))
    return found


def _html_prompt_row(prompt_rows: pd.DataFrame, rounds: list[int]) -> str:
    esc = html.escape
    by_round = {row.search_round: row for row in prompt_rows.itertuples(index=False)}
    first = prompt_rows.iloc[0]
    cells = []
    for search_round in rounds:
        row = by_round.get(search_round)
        if row is None:  # round not finished yet for this prompt
            cells.append("<td>-</td>")
            continue
        if not row.best_img_path:
            cells.append(f'<td class="meta">no image of this round could be graded ({row.ungradeable})</td>')
            continue
        cells.append(
            f'<td><img src="{thumbnail_data_uri(row.best_img_path)}" alt="round {search_round} best"><br>'
            f'<span class="meta">score {row.best_score:.3f}<br>seed {row.best_noise_seed}<br>'
            f"{row.images_generated} images</span></td>"
        )
    return (
        f"<tr><td>{int(first['prompt_index'])}</td><td class=\"prompt\">{esc(str(first['prompt']))}</td>"
        f"{''.join(cells)}<td>{prompt_rows['best_so_far'].max():.3f}</td></tr>"
    )


def summary_markdown(frame: pd.DataFrame, run_dir: str | Path) -> str:
    """A short markdown summary (e.g. for a Prefect artifact): per-round means, the gain, the files."""
    from ttsf_core.allocation import allocation_lines

    folder = Path(run_dir) / REPORT_DIRNAME
    per_round = _per_round_means(frame)
    first, last = per_round.iloc[0], per_round.iloc[-1]
    lines = [
        f"**{frame['prompt_index'].nunique()} prompts**, metric `{_metric_label(frame)}`, "
        f"rounds {per_round.index.min()}-{per_round.index.max()}",
        "",
        "| round | images per prompt | NFEs per prompt | prompts | mean best score | mean best so far |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for search_round, row in per_round.iterrows():
        lines.append(
            f"| {search_round} | {row['images_generated']:g} | {row['nfe_so_far']:g} | {int(row['prompts'])} "
            f"| {row['best_score']:.3f} | {row['best_so_far']:.3f} |"
        )
    gain = last["best_score"] - first["best_score"]
    lines += [
        "",
        f"Gain from round {per_round.index[0]} to round {per_round.index[-1]}: "
        f"{first['best_score']:.3f} → {last['best_score']:.3f} ({gain:+.3f}); "
        f"best so far reaches {last['best_so_far']:.3f}.",
        *(["", *cost_lines(frame)] if cost_lines(frame) else []),
        *(["", *allocation_lines(frame, run_dir)] if allocation_lines(frame, run_dir) else []),
        "",
        f"Files in `{folder}`: report.html, report.csv, report.parquet, scaling_curve.png, "
        "best_images.zip, collages/",
    ]
    return "\n".join(lines) + "\n"
