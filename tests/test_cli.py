import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttsf.cli import main

PROMPT = "a tiny astronaut hatching from an egg on the moon"
TINY = ["--model", "tiny-flux", "--verifier_to_use", "imagestats", "--height", "64", "--width", "64",
        "--num_inference_steps", "2"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Bad input must be reported before any pipeline is loaded."""
    from diffusers import DiffusionPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)


def _invoke(args, env=None):
    return CliRunner().invoke(main, ["run", *args], env=env)


@pytest.mark.parametrize("args,expected", [
    (["--choice_of_metric", "beauty"], "--choice_of_metric (verifier_args.choice_of_metric): received 'beauty', allowed:"),
    (["--verifier_to_use", "oracle"], "verifier_to_use: received 'oracle', allowed: gemini, imagestats, qwen"),
    (["--search_rounds", "0"], "--search_rounds (search_args.search_rounds): received '0', allowed:"),
    (["--height", "100"], "height: received 100, allowed: a positive multiple of 16"),
    (["--width", "-8"], "--width (pipeline_call_args.width): received '-8'"),
    (["--prompt", " "], "--prompt (prompts.prompt): received ' ', allowed: a non-empty text"),
    (["--num_prompts", "three"], "--num_prompts (prompts.num_prompts): received 'three', allowed: a positive integer or 'all'"),
    (["--dataset", "missing.csv"], "dataset: received 'missing.csv', allowed:"),
    (["--torch_dtype", "int4"], "--torch_dtype (torch_dtype): received 'int4'"),
    (["--seed", "-1"], "--seed (seed): received '-1'"),
])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(args, expected, no_model_loads, tmp_path):
    base = ["--model", "tiny-flux", "--verifier_to_use", "imagestats", "--output_dir", str(tmp_path)]
    if "--prompt" not in args and "--dataset" not in args and "--num_prompts" not in args:
        base += ["--prompt", PROMPT]
    result = _invoke(base + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("ttsf: error:")]
    assert len(lines) == 1 and expected in lines[0], result.output


def test_missing_column_is_named(no_model_loads, tmp_path):
    data = tmp_path / "p.csv"
    data.write_text("text\nhello\n")
    result = _invoke([*TINY, "--dataset", str(data), "--output_dir", str(tmp_path)])
    assert result.exit_code == 2 and "prompt_column: received 'prompt', allowed: one of text" in result.output


def test_missing_gemini_key_fails_before_loading(no_model_loads, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    result = CliRunner().invoke(main, ["run", "--prompt", PROMPT, "--model", "tiny-flux", "--output_dir",
                                       str(tmp_path)], env={**env, "GEMINI_API_KEY": ""})
    assert result.exit_code == 2 and "GEMINI_API_KEY" in result.output


def test_unwritable_output_dir_is_named(no_model_loads, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _invoke([*TINY, "--prompt", PROMPT, "--output_dir", str(blocker / "out")])
    assert result.exit_code == 2 and "--output_dir (output_dir): received" in result.output
    assert "allowed: a folder this user can write" in result.output


def test_num_prompts_none_needs_a_prompt(no_model_loads, tmp_path):
    result = _invoke([*TINY, "--num_prompts=None", "--output_dir", str(tmp_path)])
    assert result.exit_code == 2 and "num_prompts" in result.output


def test_the_console_script_runs_the_whole_job_and_reproduces_it(tmp_path, tiny_flux_dir):
    command = [sys.executable, "-m", "ttsf.cli", "run", "--prompt", PROMPT, "--num_prompts=None", *TINY,
               "--search_rounds", "3", "--output_dir", str(tmp_path / "out")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    run_dir = first.stdout.strip().splitlines()[-1].removeprefix("Output: ")
    records = sorted((tmp_path / "out").rglob("round_*.json"))
    assert run_dir in str(records[0]) and len(records) == 3
    assert len(list((tmp_path / "out").rglob("prompts/*/*.png"))) == 2 + 4 + 8
    assert "Report:" in first.stdout
    before = {p: p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file()}
    for path in (tmp_path / "out").rglob("*"):
        if path.suffix in (".png", ".json") and path.name != "config.json":
            path.unlink()
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    after = {p: p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file()}
    assert after == before
    assert json.loads(records[0].read_text())["search_round"] == 1


def test_help_explains_each_flag():
    result = CliRunner().invoke(main, ["run", "--help"])
    for flag in ("--prompt", "--num_prompts", "--search_rounds", "--verifier_to_use", "--choice_of_metric",
                 "--use_low_gpu_vram", "--batch_size_for_img_gen", "--dataset", "--prompt_column", "--model",
                 "--height", "--width", "--num_inference_steps", "--guidance_scale", "--seed", "--output_dir",
                 "--config"):
        assert flag in result.output


def test_report_rebuilds_from_the_records_alone(tmp_path, tiny_pipe):
    from conftest import small_config
    from ttsf_core import runner
    from ttsf_core.generate import CandidateGenerator

    config = small_config(tmp_path, search_args={"search_rounds": 2})
    prepared = runner.prepare_run(config)
    runner.run_search(prepared, CandidateGenerator(tiny_pipe, config))
    result = CliRunner().invoke(main, ["report", str(tmp_path / "output")])
    assert result.exit_code == 0, result.output
    report = prepared.layout.run_dir / "report"
    assert {p.name for p in report.iterdir()} >= {"report.csv", "report.parquet", "report.html",
                                                  "scaling_curve.png", "best_images.zip", "collages"}
    assert str(prepared.layout.run_dir) in result.output


def test_report_names_a_folder_without_runs(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "OUTPUT_DIR: received" in result.output
