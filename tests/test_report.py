"""report.py over a synthetic run folder: real PNGs and RoundRecords written through records.py."""

from __future__ import annotations

import html
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.config import RunConfig
from ttsf_core.storage.files import write_json, write_png
from ttsf_core.storage.records import (
    CandidateRecord,
    RoundRecord,
    RunLayout,
    relative_image_path,
    resolve_image,
    write_round_record,
)
from ttsf_core.usecases.report import (
    COLUMNS,
    SUMMARY_NAME,
    build_report,
    report_dataframe,
    report_image,
    summary_lines,
    summary_markdown,
)
from ttsf_core.storage.store import Recipe, Store
from ttsf_core.verifiers.base import METRIC_NAMES, grades_from_scores
from ttsf_core.resolve import resolve

DANGEROUS = '<script>alert(1)</script> & "quotes"'
PROMPTS = ["a red fox in the snow", DANGEROUS, "a lighthouse at dusk"]
POOLS = {1: 2, 2: 4, 3: 8}
STEPS = 4
# Overall scores of each (prompt, round) pool's winner; prompt 0 dips in round 2 so best_so_far != best_score.
WINNER_SCORES = {0: [7.0, 6.5, 8.25], 1: [5.0, 6.0, 7.5], 2: [8.0, 8.0, 9.0]}


def _image_width(search_round: int) -> int:
    return 16 + 4 * search_round  # rounds differ in size, so collage widths check the layout


def _candidate_scores(prompt_index: int, search_round: int, index: int, pool: int) -> dict[str, float]:
    winner = WINNER_SCORES[prompt_index][search_round - 1]
    best_at = (prompt_index + search_round) % pool
    overall = winner if index == best_at else winner - 0.5 - 0.1 * index
    return {name: round(max(0.0, overall - 0.25 * k), 4) for k, name in enumerate(METRIC_NAMES[:-1])} | {
        "overall_score": overall
    }


def _write_round(layout: RunLayout, prompt_index: int, prompt: str, search_round: int, config: RunConfig) -> None:
    pool = POOLS[search_round]
    store, record_path = Store(resolve(config)), layout.record_path(prompt, search_round)
    candidates = []
    for index in range(pool):
        seed = 1000 * prompt_index + 100 * search_round + index
        colour = ((37 * seed) % 256, (91 * seed) % 256, (53 * seed + 17) % 256)
        image = Image.new("RGB", (_image_width(search_round), 12), colour)
        candidate = Candidate(noise=NoiseSpec(seed=seed), steps=STEPS)
        recipe = Recipe(noise=candidate.noise, steps=STEPS, batch=(candidate.noise,), batch_position=0)
        stored = store.write_image(prompt, candidate, image, recipe)
        grades = grades_from_scores(_candidate_scores(prompt_index, search_round, index, pool), "synthetic")
        candidates.append(
            CandidateRecord(index=index, seed=seed, noise=candidate.noise, steps=STEPS,
                            img_path=relative_image_path(record_path, stored.path), image_sha256=stored.sha256,
                            score=grades.score("overall_score"), grades=grades)
        )
    best = max(candidates, key=lambda c: c.score)
    record = RoundRecord(
        prompt=prompt, prompt_index=prompt_index, search_round=search_round, num_noises=pool,
        best_noise_seed=best.seed, best_score=best.score, choice_of_metric="overall_score",
        best_img_path=best.img_path, best_index=best.index, config_hash=resolve(config).identity_hash,
        candidates=candidates, nfe=pool * STEPS,
    )
    write_round_record(record_path, record)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    config = RunConfig(
        output_dir=tmp_path_factory.mktemp("out"),
        pretrained_model_name_or_path="tiny-flux",
        search_args={"search_rounds": 3},
    )
    layout = RunLayout(resolve(config))
    write_json(layout.config_path, config.model_dump(mode="json"))
    # Written out of order on purpose: the report must sort, not trust write order.
    for search_round in (3, 1, 2):
        for prompt_index, prompt in reversed(list(enumerate(PROMPTS))):
            _write_round(layout, prompt_index, prompt, search_round, config)
    return layout.run_dir


@pytest.fixture(scope="module")
def frame(run_dir) -> pd.DataFrame:
    return report_dataframe(run_dir)


@pytest.fixture(scope="module")
def files(run_dir):
    return build_report(run_dir)


def _records(run_dir: Path) -> dict[tuple[int, int], dict]:
    found = {}
    for path in run_dir.glob("prompts/*/round_*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        found[(data["prompt_index"], data["search_round"])] = data | {"_path": path}
    return found


def _load(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def test_dataframe_rows_and_columns(frame):
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(PROMPTS) * len(POOLS)
    assert list(zip(frame["prompt_index"], frame["search_round"])) == [(p, r) for p in range(3) for r in (1, 2, 3)]
    assert frame["prompt"].tolist() == [p for p in PROMPTS for _ in POOLS]
    assert frame["num_noises"].tolist() == [2, 4, 8] * 3
    assert frame["images_generated"].tolist() == [2, 6, 14] * 3
    assert frame["nfe_so_far"].tolist() == [2 * STEPS, 6 * STEPS, 14 * STEPS] * 3
    assert set(frame["search_method"]) == {"random"}
    assert set(frame["choice_of_metric"]) == {"overall_score"}


def test_dataframe_best_scores_and_best_so_far(frame):
    for prompt_index, rows in frame.groupby("prompt_index"):
        expected = WINNER_SCORES[prompt_index]
        assert rows["best_score"].tolist() == expected
        assert rows["best_so_far"].is_monotonic_increasing
        assert rows["best_so_far"].tolist() == pd.Series(expected).cummax().tolist()
    assert frame.loc[(frame.prompt_index == 0) & (frame.search_round == 2), "best_so_far"].item() == 7.0


def test_metric_columns_are_the_best_candidates_grades(frame, run_dir):
    records = _records(run_dir)
    for row in frame.itertuples(index=False):
        record = records[(row.prompt_index, row.search_round)]
        best = next(c for c in record["candidates"] if c["index"] == record["best_index"])
        # Seeds are strings in JSON (exact for JavaScript readers), exact integers in the frame.
        assert str(row.best_noise_seed) == best["seed"] == record["best_noise_seed"]
        for name in METRIC_NAMES:
            assert getattr(row, name) == best["grades"][name]["score"]
        path = report_image(run_dir, row.best_img_path)
        assert not Path(row.best_img_path).is_absolute() and path.is_file()  # relative to the report folder
        assert not Path(best["img_path"]).is_absolute()  # records name images relative to themselves
        assert path == resolve_image(record["_path"], best["img_path"]).absolute()


def test_report_files_exist(files):
    paths = [files.parquet, files.csv, files.html, files.scaling_curve, files.best_images_zip, *files.collages]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0, path
        assert path.is_relative_to(files.folder)
    assert not list(files.folder.rglob("*.tmp"))
    with Image.open(files.scaling_curve) as curve:
        assert curve.format == "PNG" and curve.width > 100


def test_csv_and_parquet_round_trip(files, frame):
    from_csv = pd.read_csv(files.csv)
    pd.testing.assert_frame_equal(from_csv, frame, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(files.parquet), frame)


def test_html_escapes_prompt_and_embeds_images(files):
    page = files.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert html.escape(DANGEROUS) in page
    assert page.count('src="data:image/jpeg;base64,') == len(PROMPTS) * len(POOLS)
    assert page.count('src="data:image/png;base64,') == 1  # the scaling curve
    assert "src=\"http" not in page and "src=\"/" not in page  # self-contained


def test_zip_holds_each_best_image_once(files, frame):
    with zipfile.ZipFile(files.best_images_zip) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        expected = {
            f"p{row.prompt_index:04d}_r{row.search_round:02d}_s{row.best_noise_seed}.png":
                report_image(files.folder.parent, row.best_img_path)
            for row in frame.itertuples(index=False)
        }
        assert sorted(names) == sorted(expected) and len(names) == len(set(names))
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert archive.read(info) == Path(expected[info.filename]).read_bytes()


def test_collage_per_prompt(files, frame):
    assert len(files.collages) == len(PROMPTS)
    assert [p.name[:6] for p in files.collages] == ["p0000_", "p0001_", "p0002_"]
    for path, (_, rows) in zip(files.collages, frame.groupby("prompt_index")):
        assert "<" not in path.name and '"' not in path.name
        winners = [_load(report_image(files.folder.parent, p)) for p in rows["best_img_path"]]
        sheet = _load(path)
        assert sheet.width == sum(image.width for image in winners)
        assert sheet.height > max(image.height for image in winners)  # plus the caption strip
        assert sheet.getpixel((1, 1)) == winners[0].getpixel((1, 1))
        assert sheet.getpixel((winners[0].width + 1, 1)) == winners[1].getpixel((1, 1))


def test_rebuild_is_deterministic(run_dir, files):
    before = {p: p.read_bytes() for p in (files.csv, files.parquet, files.best_images_zip, *files.collages)}
    again = build_report(run_dir)
    assert again == files
    for path, data in before.items():
        assert path.read_bytes() == data, path


def test_empty_folder_raises(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ValueError, match="no round records under") as caught:
        report_dataframe(empty)
    assert str(empty) in str(caught.value)
    with pytest.raises(ValueError, match="no round records under"):
        build_report(empty)
    assert not (empty / "report").exists()


def _partial_run(tmp_path: Path, rounds_per_prompt: dict[int, tuple[int, ...]]) -> Path:
    config = RunConfig(output_dir=tmp_path, pretrained_model_name_or_path="tiny-flux", search_args={"search_rounds": 3})
    layout = RunLayout(resolve(config))
    for prompt_index, rounds in rounds_per_prompt.items():
        for search_round in rounds:
            _write_round(layout, prompt_index, PROMPTS[prompt_index], search_round, config)
    return layout.run_dir


def test_unfinished_run_reports_the_rounds_it_has(tmp_path):
    run_dir = _partial_run(tmp_path, {0: (1, 2, 3), 2: (1,)})
    files = build_report(run_dir)
    frame = pd.read_csv(files.csv)
    assert list(zip(frame["prompt_index"], frame["images_generated"])) == [(0, 2), (0, 6), (0, 14), (2, 2)]
    assert len(files.collages) == 2
    assert "<td>-</td>" in files.html.read_text(encoding="utf-8")  # prompt 2 has no round 2 or 3 yet
    assert f"| 3 | 14 | {14 * STEPS} | 1 |" in summary_markdown(frame, run_dir)  # only one prompt reached round 3


def test_best_index_missing_from_candidates_is_an_error(tmp_path):
    run_dir = _partial_run(tmp_path, {0: (1,)})
    record_path = next(run_dir.glob("prompts/*/round_01.json"))
    data = json.loads(record_path.read_text(encoding="utf-8"))
    write_json(record_path, data | {"best_index": 99})
    with pytest.raises(ValueError, match="best_index 99"):
        report_dataframe(run_dir)


def test_summary_markdown_mentions_each_round_mean(frame, run_dir):
    text = summary_markdown(frame, run_dir)
    assert "3 prompts" in text
    for search_round, rows in frame.groupby("search_round"):
        mean = sum(WINNER_SCORES[p][search_round - 1] for p in range(3)) / 3
        assert rows["best_score"].mean() == pytest.approx(mean)
        assert f"| {search_round} |" in text and f"{mean:.3f}" in text
    gain = frame[frame.search_round == 3]["best_score"].mean() - frame[frame.search_round == 1]["best_score"].mean()
    assert f"{gain:+.3f}" in text
    assert str(Path(run_dir) / "report") in text


def test_a_moved_output_folder_still_resolves_every_image(run_dir, files, tmp_path):
    import shutil

    output = run_dir.parents[3]
    moved = tmp_path / "moved"
    shutil.copytree(output, moved)
    moved_run = moved / run_dir.relative_to(output)
    frame = report_dataframe(moved_run)
    assert all(report_image(moved_run, path).is_file() and report_image(moved_run, path).is_relative_to(moved)
               for path in frame["best_img_path"])
    # The report files themselves name images relative to the report: the copy's CSV works where it lies.
    report = pd.read_csv(moved_run / "report" / "report.csv")
    assert all((moved_run / "report" / path).is_file() for path in report["best_img_path"])


def test_an_unchanged_report_is_not_rebuilt(tmp_path):
    run_dir = _partial_run(tmp_path, {0: (1, 2)})
    first = build_report(run_dir, only_if_changed=True)
    assert first is not None
    stamp = first.html.stat().st_mtime_ns
    assert build_report(run_dir, only_if_changed=True) is None and first.html.stat().st_mtime_ns == stamp
    config = RunConfig(output_dir=tmp_path, pretrained_model_name_or_path="tiny-flux", search_args={"search_rounds": 3})
    _write_round(RunLayout(resolve(config)), 0, PROMPTS[0], 3, config)
    assert build_report(run_dir, only_if_changed=True) is not None  # a new record: rebuilt


def test_the_summary_is_kept_until_a_record_changes(tmp_path):
    """`ttsf run` prints summary_lines after a search: a re-run with nothing new reads them back (no
    pandas), a new round makes them again."""
    run_dir = _partial_run(tmp_path, {0: (1, 2), 2: (1,)})
    lines = summary_lines(run_dir)
    assert lines[:3] == ["2 prompts, metric overall_score, search random",
                         f"  round 1: 2 images ({2 * STEPS} NFEs) a prompt so far, "
                         f"mean best score {(WINNER_SCORES[0][0] + WINNER_SCORES[2][0]) / 2:.3f}",
                         f"  round 2: 6 images ({6 * STEPS} NFEs) a prompt so far, "
                         f"mean best score {WINNER_SCORES[0][1]:.3f}"]
    kept = run_dir / "report" / SUMMARY_NAME
    assert json.loads(kept.read_text(encoding="utf-8"))["lines"] == lines
    write_json(kept, json.loads(kept.read_text(encoding="utf-8")) | {"lines": ["as kept"]})
    assert summary_lines(run_dir) == ["as kept"]  # the records did not change: read back, not made again
    config = RunConfig(output_dir=tmp_path, pretrained_model_name_or_path="tiny-flux", search_args={"search_rounds": 3})
    _write_round(RunLayout(resolve(config)), 2, PROMPTS[2], 2, config)
    assert summary_lines(run_dir)[2].endswith(f"mean best score {(WINNER_SCORES[0][1] + WINNER_SCORES[2][1]) / 2:.3f}")


def test_records_from_before_the_store_still_read(tmp_path):
    """A record written by the earlier layout: bare seeds, absolute image paths beside the record."""
    folder = tmp_path / "run" / "prompts" / "p-0123456789"
    image = folder / "r01_c000_s7.png"
    digest = write_png(image, Image.new("RGB", (8, 8), "red"))
    grades = grades_from_scores({m: 5.0 for m in METRIC_NAMES}, "old")
    candidate = {"index": 0, "seed": 7, "img_path": str(image), "image_sha256": digest, "score": 5.0,
                 "grades": grades.model_dump()}
    old = {"prompt": "p", "prompt_index": 0, "search_round": 1, "num_noises": 1, "best_noise_seed": 7,
           "best_score": 5.0, "choice_of_metric": "overall_score", "best_img_path": str(image), "best_index": 0,
           "config_hash": "abc", "candidates": [candidate]}
    write_json(folder / "round_01.json", old)
    frame = report_dataframe(tmp_path / "run")
    assert frame["best_noise"].tolist() == ["s7"] and frame["images_generated"].tolist() == [1]
    assert report_image(tmp_path / "run", frame["best_img_path"][0]) == image.absolute()
