import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttsf_core.resolve import resolve
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


ERROR_LINE = re.compile(r"^ttsf: error: (--[a-z_]+ \([a-z_.]+\)|[A-Za-z0-9_.-]+( \([^)]*\))?): received .+, allowed: .+$")
PYDANTIC_WORDING = ("Input should", "input should", "valid integer", "For further information", "pydantic")
OK = ["--prompt", PROMPT, "--verifier_to_use", "imagestats"]  # a valid rest of the command line
NO_KEY = {"GEMINI_API_KEY": ""}


def case(flags, *expected, files=None, env=None):
    """One bad input: flags ({tmp} is the test's folder), files written there first, and a fragment of
    each error line expected, in order (one line per problem)."""
    files = files or {}
    texts = [text.decode("latin-1") if isinstance(text, bytes) else text for text in files.values()]
    shown = " ".join([*(flags[len(OK):] if flags[:len(OK)] == OK else flags), *texts])[:120]
    return pytest.param(flags, files, env or NO_KEY, expected, id=shown.replace("\n", "; "))


def config(name, text, *expected, env=None):
    """A bad config file, given with --config beside valid flags."""
    return case([*OK, "--config", "{tmp}/" + name], *expected, files={name: text}, env=env)


INT_1_16 = "allowed: an integer >= 1 and <= 16"
BAD_INPUTS = [
    # the verifier's settings and the budget
    case([*OK, "--verifier_thinking_level", "low"], "--verifier_thinking_level (verifier_args.thinking_level): "
         "received 'low' with verifier_args.name='imagestats', allowed: unset (only gemini takes it)"),
    case([*OK, "--verifier_thinking_level", "deep"], "--verifier_thinking_level (verifier_args.thinking_level): "
         "received 'deep', allowed: one of minimal, low, medium, high"),
    case([*OK, "--verifier_media_resolution", "4k"], "--verifier_media_resolution (verifier_args.media_resolution): "
         "received '4k', allowed: one of low, medium, high"),
    case(["--prompt", PROMPT, "--verifier_thinking_level", "minimal"], "--verifier_thinking_level "
         "(verifier_args.thinking_level): received 'minimal', allowed: low, medium, high (the levels gemini-3.8-flash "
         "takes)", env={"GEMINI_API_KEY": "a-key"}),
    case(["--prompt", PROMPT, "--verifier_model", "gemini-2.0-flash", "--verifier_media_resolution", "low"],
         "--verifier_media_resolution (verifier_args.media_resolution): received 'low', allowed: unset "
         "(gemini-2.0-flash takes no media resolution)", env={"GEMINI_API_KEY": "a-key"}),
    case([*OK, "--max_verifier_requests", "0"],
         "--max_verifier_requests (budget.max_verifier_requests): received '0', allowed: an integer >= 1"),
    case([*OK, "--max_verifier_cost", "-2"],
         "--max_verifier_cost (budget.max_verifier_cost_usd): received '-2', allowed: a number > 0"),
    case([*OK, "--max_verifier_cost", "lots"],
         "--max_verifier_cost (budget.max_verifier_cost_usd): received 'lots', allowed: a number > 0"),
    config("prices.json", '{"prices": {"gemini-3.8-flash": {"input_per_1m_usd": -1, "output_per_1m_usd": 1}}}',
           "prices.gemini-3.8-flash.input_per_1m_usd: received -1, allowed: a number >= 0"),
    # flags: out of range, wrong type, not one of the choices
    case([*OK, "--search_rounds", "0"], f"--search_rounds (search_args.search_rounds): received '0', {INT_1_16}"),
    case([*OK, "--search_rounds", "17"], f"--search_rounds (search_args.search_rounds): received '17', {INT_1_16}"),
    case([*OK, "--seed", "-1"], "--seed (seed): received '-1', allowed: an integer >= 0 and < "),
    case([*OK, "--height", "tall"], "--height (pipeline_call_args.height): received 'tall', allowed: an integer > 0"),
    case([*OK, "--height", "100"], "--height (pipeline_call_args.height): received 100, allowed: a positive multiple of 16"),
    case([*OK, "--width", "-8"], "--width (pipeline_call_args.width): received '-8', allowed: an integer > 0"),
    case([*OK, "--num_inference_steps", "2.5"],
         "--num_inference_steps (pipeline_call_args.num_inference_steps): received '2.5', allowed: an integer >= 1"),
    case([*OK, "--guidance_scale", "loud"],
         "--guidance_scale (pipeline_call_args.guidance_scale): received 'loud', allowed: a number >= 0"),
    case([*OK, "--max_sequence_length", "1000"], "received '1000', allowed: an integer >= 1 and <= 512"),
    case([*OK, "--torch_dtype", "int4"], "--torch_dtype (torch_dtype): received 'int4', allowed: one of bf16, fp16, fp32"),
    case([*OK, "--choice_of_metric", "beauty"],
         "--choice_of_metric (verifier_args.choice_of_metric): received 'beauty', allowed: one of accuracy_to_prompt"),
    case([*OK, "--verifier_to_use", "oracle"],
         "--verifier_to_use (verifier_args.name): received 'oracle', allowed: clip, gemini, image_reward, imagestats, "
         "laion_aesthetic, openai, pickscore, qwen"),
    case([*OK, "--verifier_concurrency", "0"],
         "--verifier_concurrency (verifier_args.max_concurrency): received '0', allowed: an integer >= 1 and <= 256"),
    case([*OK, "--batch_size_for_img_gen", "many"], "received 'many', allowed: an integer >= 1 and <= 256"),
    case([*OK, "--verifier_rpm", "0"], "--verifier_rpm (verifier_rpm): received '0', allowed: an integer >= 1"),
    case([*OK, "--search_method", "beam"],
         "--search_method (search_args.search_method): received 'beam', allowed: one of random, zero-order"),
    case([*OK, "--search_method", "zero-order", "--threshold", "1"],
         "--threshold (search_args.threshold): received '1', allowed: a number > 0 and < 1"),
    case([*OK, "--search_method", "zero-order", "--threshold", "close"],
         "--threshold (search_args.threshold): received 'close', allowed: a number > 0"),
    case([*OK, "--threshold", "0.5"], "--threshold (search_args.threshold): received '0.5' with search_method 'random', "
         "allowed: unset (threshold belongs to zero-order; random takes"),
    case([*OK, "--search_method", "zero-order", "--num_neighbors", "0"],
         "--num_neighbors (search_args.num_neighbors): received '0', allowed: an integer >= 1 and <= 256"),
    case([*OK, "--draft_steps", "0"], "--draft_steps (search_args.draft_steps): received '0', allowed: an integer >= 1"),
    case([*OK, "--num_inference_steps", "4", "--draft_steps", "4"], "--draft_steps (search_args.draft_steps): received 4, "
         "allowed: an integer >= 1 and < pipeline_call_args.num_inference_steps (4)"),
    case([*OK, "--draft_keep", "two"], "--draft_keep (search_args.draft_keep): received 'two', allowed: an integer >= 1"),
    case([*OK, "--prompt", " "], "--prompt (prompts.prompt): received ' ', allowed: a non-empty text"),
    case(["--num_prompts", "three"],
         "--num_prompts (prompts.num_prompts): received 'three', allowed: a positive integer or 'all'"),
    case([*OK, "--seed", "x", "--search_rounds", "0", "--search_method", "beam"],
         "--seed (seed): received 'x'", "--search_rounds (search_args.search_rounds): received '0'"),
    case([*OK, "--search_method", "zero-order", "--threshold", "2", "--num_neighbors", "0"],
         "--threshold (search_args.threshold): received '2'", "--num_neighbors (search_args.num_neighbors): received '0'"),
    # flags: problems found before a model loads
    case(["--verifier_to_use", "imagestats", "--num_prompts=None"], "--num_prompts (prompts.num_prompts): received None, "
         "allowed: a positive integer or 'all' (None only together with --prompt)"),
    case(["--verifier_to_use", "imagestats", "--dataset", "{tmp}/missing.csv"],
         "--dataset (prompts.dataset): received '{tmp}/missing.csv', allowed: a readable"),
    case(["--verifier_to_use", "imagestats", "--dataset", "{tmp}/p.csv"],
         "--prompt_column (prompts.prompt_column): received 'prompt', allowed: one of text", files={"p.csv": "text\nhi\n"}),
    case([*OK, "--output_dir", "{tmp}/a-file/out"],
         "--output_dir (output_dir): received '{tmp}/a-file/out', allowed: a folder this user can write",
         files={"a-file": ""}),
    case(["--prompt", PROMPT], "GEMINI_API_KEY (verifier_args.name=gemini): received nothing, allowed: your Gemini API "
         "key in the environment (https://aistudio.google.com/apikey), or another --verifier_to_use"),
    case(["--prompt", PROMPT, "--config", "{tmp}/c.json"],
         "verifier_args.options.base_url: received 'localhost:1', allowed: an http:// or https:// URL",
         files={"c.json": '{"verifier_args": {"options": {"base_url": "localhost:1"}}}'}, env={"GEMINI_API_KEY": "k"}),
    # click's own usage errors
    case([*OK, "--seeed", "3"], "flags: received unknown flag '--seeed', allowed: --seed"),
    case([*OK, "--seed"], "--seed (seed): received nothing, allowed: a value after --seed"),
    case([*OK, "--use_low_gpu_vram=yes"],
         "--use_low_gpu_vram (use_low_gpu_vram): received a value, allowed: --use_low_gpu_vram alone"),
    case([*OK, "stray"], "arguments: received 'stray', allowed: none"),
    case([*OK, "--executor", "dask"], "--executor: received 'dask', allowed: one of auto, prefect, threads"),
    # config files: JSON, TOML, YAML
    case([*OK, "--config", "{tmp}/none.json"],
         "config: received '{tmp}/none.json', allowed: an existing .json, .toml, .yaml or .yml file"),
    config("c.json", '{"verifier_args": {"options": {"max_sides": 3}}}',
           "verifier_args.options: received unknown 'max_sides', allowed: max_side"),
    config("c.json", '{"seed": "x", "pipeline_call_args": {"guidance_scale": [1]}}',
           "--seed (seed): received 'x', allowed: an integer >= 0",
           "--guidance_scale (pipeline_call_args.guidance_scale): received [1], allowed: a number >= 0"),
    config("c.json", '{"foo": 1, "verifier_retry_backoff_s": 900}',
           "verifier_retry_backoff_s: received 900, allowed: a number >= 0 and <= 600",
           "foo: received unknown field 'foo', allowed: pretrained_model_name_or_path, torch_dtype"),
    config("c.toml", "[search_args]\nsearch_rounds = 0\nthreshold = 1.5\n",
           f"--search_rounds (search_args.search_rounds): received 0, {INT_1_16}"),
    config("zo.toml", "[search_args]\nsearch_method = 'zero-order'\nthreshold = 1.5\n",
           "--threshold (search_args.threshold): received 1.5, allowed: a number > 0 and < 1"),
    config("c.toml", "pipeline_call_args = 5\n", "pipeline_call_args: received 5, allowed: a mapping of height, width"),
    config("c.toml", "[prompts]\nprompt_colum = 'x'\n",
           "prompts.prompt_colum: received unknown field 'prompt_colum' (did you mean prompts.prompt_column?), "
           "allowed: prompt, dataset"),
    config("flat.yaml", "search_rounds: 3\n", "search_rounds: received unknown field 'search_rounds' (did you mean "
           "search_args.search_rounds?), allowed: pretrained_model_name_or_path"),
    config("typo.yaml", "search_args: {serch_rounds: 3}\n", "search_args.serch_rounds: received unknown field "
           "'serch_rounds' (did you mean search_args.search_rounds?), allowed: search_rounds, draft_steps"),
    config("c.yaml", "use_low_gpu_vram: maybe\nverifier_args:\n  max_new_tokens: 0\n",
           "--use_low_gpu_vram (use_low_gpu_vram): received 'maybe', allowed: true or false",
           "verifier_args.max_new_tokens: received 0, allowed: an integer >= 1"),
    config("c.yaml", "search_args:\n  beam_width: 4\n  search_method: 7\n",
           "--search_method (search_args.search_method): received 7, allowed: the name of a search strategy"),
    config("beam.yaml", "search_args:\n  beam_width: 4\n",
           "search_args.beam_width: received unknown field 'beam_width', allowed: search_rounds, draft_steps"),
    config("c.yaml", "result_storage: [a]\nverifier_args:\n  options: [1]\n",
           "verifier_args.options: received [1], allowed: a mapping of names to values",
           "--result_storage (result_storage): received ['a'], allowed: a text"),
    config("c.yaml", "- a\n- b\n", "allowed: a mapping of field names to values"),
    config("c.yaml", "seed: [1\n", "allowed: a valid YAML file"),
    config("c.json", "{not json", "allowed: a valid JSON file"),
    config("c.toml", "seed = \n", "allowed: a valid TOML file"),
    # devices, types a YAML file gets wrong, bounds, prompts, datasets, storage, environment
    case([*OK, "--device", "nonsense"], "--device (device): received 'nonsense', allowed: auto, cpu, cuda, cuda:N or mps"),
    case([*OK, "--device", "cuda"], "--device (device): received 'cuda' (no CUDA device is visible here), allowed: auto, cpu"),
    case([*OK, "--device", "cuda:3"], "--device (device): received 'cuda:3' (no CUDA device is visible here)"),
    config("c.yaml", "verifier_args:\n  device: gpu\n", "verifier_args.device: received 'gpu', allowed: auto, cpu, cuda"),
    config("c.yaml", "search_args:\n  search_rounds: true\n",
           "--search_rounds (search_args.search_rounds): received True, allowed: an integer"),
    config("c.yaml", "seed: false\n", "--seed (seed): received False, allowed: an integer"),
    config("c.yaml", "pipeline_call_args:\n  guidance_scale: yes\n", "received True, allowed: a number"),
    case([*OK, "--search_rounds", "13"], "--search_rounds (search_args.search_rounds): received 13 (round 13 would draw "
         "8192 noises), allowed: rounds whose largest pool is at most 4096 noises"),
    case([*OK, "--initial_pool_size", "5000"], "received '5000', allowed: an integer >= 1 and <= 1024"),
    case([*OK, "--height", "9000"], "--height (pipeline_call_args.height): received '9000', allowed: an integer > 0 and <= 8192"),
    case([*OK, "--num_inference_steps", "5000"], "allowed: an integer >= 1 and <= 1000"),
    case([*OK, "--num_prompts", "3"], "--num_prompts (prompts.num_prompts): received 3 together with a prompt, allowed:"),
    case(["--verifier_to_use", "imagestats", "--prompt", "x" * 20001],
         "(20001 characters), allowed: a text of at most 20000 characters"),
    case(["--verifier_to_use", "imagestats", "--prompt", "\x00\x00 \x1b"],
         "--prompt (prompts.prompt): received '\\x00\\x00 \\x1b', allowed: a non-empty text"),
    case(["--verifier_to_use", "imagestats", "--dataset", "{tmp}/nul.txt"],
         "--dataset (prompts.dataset): received '{tmp}/nul.txt' (line 1: it holds the control character '\\x00' at "
         "character 0;", files={"nul.txt": b"\x00\x00\x00\n\x00\n"}),
    case(["--verifier_to_use", "imagestats", "--dataset", "{tmp}/blank.txt"],
         "--dataset (prompts.dataset): received '{tmp}/blank.txt' (it holds no non-empty prompts)",
         files={"blank.txt": b"\n  \n\t\n"}),
    case(["--verifier_to_use", "imagestats", "--dataset", "{tmp}/long.txt"],
         "--dataset (prompts.dataset): received '{tmp}/long.txt' (line 2: it has 20001 characters, over 20000; ttsf "
         "searches a prompt exactly as given, or not at all), allowed: prompts of at most 20000 characters",
         files={"long.txt": "a cat\n" + "y" * 20001 + "\n"}),
    case(["--verifier_to_use", "imagestats", "--dataset", "{tmp}/p.parquet"], "--dataset (prompts.dataset): received",
         files={"p.parquet": b"PAR1 not really"}),
    config("c.json", b'{"seed": 1, "prompts": {"prompt": "caf\xe9"}}', "allowed: a valid JSON file"),
    case([*OK, "--result_storage", "{tmp}/a-file/results"],
         "--result_storage (result_storage): received '{tmp}/a-file/results' (Not a directory), allowed: a folder this "
         "user can write", files={"a-file": ""}),
    case([*OK, "--quantize", "fp8"], "--quantize (quantize): received 'fp8' (this run is on cpu), allowed: none, or fp8"),
    case([*OK, "--quantize", "int4"], "--quantize (quantize): received 'int4', allowed: one of none, fp8"),
    case([*OK, "--attention_backend", "warp"], "--attention_backend (attention_backend): received 'warp', allowed:"),
    case(["--prompt", PROMPT], "GEMINI_BASE_URL: received 'ftp://example', allowed: an http:// or https:// URL",
         env={"GEMINI_API_KEY": "k", "GEMINI_BASE_URL": "ftp://example"}),
]


@pytest.mark.parametrize("flags,files,env,expected", BAD_INPUTS)
def test_every_bad_input_is_one_line_in_one_format(flags, files, env, expected, no_model_loads, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    args = ["--model", "tiny-flux", "--output_dir", str(tmp_path / "out"), *(f.format(tmp=tmp_path) for f in flags)]
    result = _invoke(args, env=env)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert not (tmp_path / "out").exists()  # a refused input writes nothing
    lines = [line for line in result.output.splitlines() if line.startswith("ttsf: error:")]
    assert len(lines) == len(expected), result.output
    for line, fragment in zip(lines, expected):
        assert ERROR_LINE.match(line) and fragment.format(tmp=tmp_path) in line, line
    assert not any(words in result.output for words in (*PYDANTIC_WORDING, "Traceback")), result.output


def without_prefect_server(tmp_path: Path) -> dict[str, str]:
    """This environment with no Prefect server configured: no PREFECT_API_URL, no profile (a profiles
    file that does not exist), so `--executor auto` runs without Prefect whatever this machine's
    ~/.prefect/profiles.toml says."""
    env = {name: value for name, value in os.environ.items()
           if name.upper() not in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")}
    return env | {"PREFECT_PROFILES_PATH": str(tmp_path / "no-profiles.toml")}


def test_the_console_script_runs_the_whole_job_and_reproduces_it(tmp_path, tiny_flux_dir):
    command = [sys.executable, "-m", "ttsf.cli", "run", "--prompt", PROMPT, "--num_prompts=None", *TINY,
               "--search_rounds", "3", "--output_dir", str(tmp_path / "out")]
    env = without_prefect_server(tmp_path)
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    run_dir = first.stdout.strip().splitlines()[-1].removeprefix("Output: ")
    records = sorted((tmp_path / "out").rglob("round_*.json"))
    assert run_dir in str(records[0]) and len(records) == 3
    assert len(list((tmp_path / "out").rglob("store/images/*/*/*.png"))) == 2 + 4 + 8
    assert "Report:" in first.stdout
    def outputs():  # records, report, config: not the run's bookkeeping (lock, logs, batch summaries)
        return {p: p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file() and not p.name.endswith(".lock")
                and not {"logs", "batches"} & set(p.relative_to(run_dir).parts)}

    before = outputs()
    # The terminal gets the progress bar and ttsf's lines, nothing of Prefect's or the libraries' logs.
    assert "Log: " in first.stdout
    shown = [line for line in first.stderr.replace("\r", "\n").split("\n") if line.strip()]
    # No server configured: the default runs without Prefect, and says in one line how to get the UI.
    assert shown[0].startswith("ttsf: note: no Prefect server configured") and "--executor prefect" in shown[0], \
        first.stderr
    assert all(line.lstrip("\x1b[A").startswith(("generate", "grade")) for line in shown[1:]), first.stderr
    # Both bars run over the 2 + 4 + 8 images of the run, from none to all of them.
    for bar in ("generate", "grade   "):
        shown_counts = {int(m) for m in re.findall(rf"{bar}: +\d+%\|[^|]*\| *(\d+)/14", first.stderr)}
        assert {0, 14} <= shown_counts, (bar, sorted(shown_counts))
    for path in (tmp_path / "out").rglob("*"):
        if path.suffix in (".png", ".json") and path.name != "config.json":
            path.unlink()
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert outputs() == before
    assert json.loads(records[0].read_text())["search_round"] == 1


def test_help_types_each_value_and_says_which_model_a_default_belongs_to():
    text = " ".join(CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output.split())
    for shown in ("--height INTEGER", "--guidance_scale FLOAT", "--search_method [random|zero-order|paths|fk]",
                  "--num_prompts INTEGER|all", "--output_dir PATH", "--executor [auto|prefect|threads]",
                  "[1024 for FLUX.1-dev; 128 for tiny-flux", "any other model: its pipeline's own]"):
        assert shown in text, shown
    listing = CliRunner().invoke(main, ["--help"], terminal_width=80).output.partition("Commands:")[2]
    assert "..." not in listing and "estimate" in listing  # each command's line whole


def test_help_explains_each_flag():
    result = CliRunner().invoke(main, ["run", "--help"])
    for flag in ("--prompt", "--num_prompts", "--search_rounds", "--verifier_to_use", "--choice_of_metric",
                 "--use_low_gpu_vram", "--batch_size_for_img_gen", "--dataset", "--prompt_column", "--model",
                 "--height", "--width", "--num_inference_steps", "--guidance_scale", "--seed", "--output_dir",
                 "--config"):
        assert flag in result.output


def test_report_rebuilds_from_the_records_alone(tmp_path, tiny_pipe):
    from conftest import small_config
    from ttsf_core.usecases import runner
    from ttsf_core.engine.generate import CandidateGenerator

    config = small_config(tmp_path, search_args={"search_rounds": 2})
    prepared = runner.prepare_run(config)
    runner.run(prepared, CandidateGenerator(tiny_pipe, resolve(config)))
    result = CliRunner().invoke(main, ["report", str(tmp_path / "output")])
    assert result.exit_code == 0, result.output
    report = prepared.layout.run_dir / "report"
    assert {p.name for p in report.iterdir()} >= {"report.csv", "report.parquet", "report.html",
                                                  "scaling_curve.png", "best_images.zip", "collages"}
    assert str(prepared.layout.run_dir) in result.output


def test_report_names_a_folder_without_runs(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "OUTPUT_DIR: received" in result.output


def _run_threads(tmp_path, *extra):
    args = ["--prompt", PROMPT, *TINY, "--output_dir", str(tmp_path / "out"), "--executor", "threads", *extra]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    return result.output


def test_run_counts_show_a_longer_run_and_another_metric_redo_nothing(tmp_path, tiny_flux_dir):
    assert "generated 14 images and graded 14" in _run_threads(tmp_path, "--search_rounds", "3")
    longer = _run_threads(tmp_path, "--search_rounds", "4")
    assert "generated 16 images and graded 16" in longer and "3 rounds already recorded" in longer
    other_metric = _run_threads(tmp_path, "--search_rounds", "4", "--choice_of_metric", "accuracy_to_prompt")
    assert "generated 0 images and graded 0 (30 images and 30 grades were already stored" in other_metric
    assert "Nothing to do: all 1 prompts x 4 rounds are recorded" in _run_threads(tmp_path, "--search_rounds", "4")
    zero_order = _run_threads(tmp_path, "--search_rounds", "2", "--search_method", "zero-order")
    assert "generated 8 images" in zero_order and "search zero-order" in zero_order  # round 1's pivot is shared


def test_regenerate_reproduces_a_recorded_image_and_says_when_it_does_not(tmp_path, tiny_flux_dir):
    _run_threads(tmp_path, "--search_rounds", "2", "--batch_size_for_img_gen", "3")
    record = sorted((tmp_path / "out").rglob("round_02.json"))[0]
    result = CliRunner().invoke(main, ["regenerate", str(record), "--index", "3", "--out", str(tmp_path / "r.png")])
    assert result.exit_code == 0 and "byte-identical" in result.output, result.output
    data = json.loads(record.read_text())
    data["candidates"][data["best_index"]]["image_sha256"] = "0" * 64
    data["candidates"][data["best_index"]]["img_path"] = data["best_img_path"]
    tampered = record.parent / "round_02.json"
    tampered.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["regenerate", str(tampered), "--out", str(tmp_path / "best.png")])
    assert result.exit_code == 1 and "DIFFERENT" in result.output
    result = CliRunner().invoke(main, ["regenerate", str(record), "--index", "99"])
    assert result.exit_code == 2 and "--index: received 99, allowed: 0..3" in result.output


def _write_legacy_run(output: Path, pipe) -> Path:
    """A run folder as the layout before the store wrote it: PNGs beside bare-seed records."""
    from conftest import small_config
    from ttsf_core.storage.files import prompt_dirname, write_json, write_png
    from ttsf_core.engine.generate import CandidateGenerator, seed_candidates
    from ttsf_core.usecases.migrate import legacy_identity
    from ttsf_core.config import digest
    from ttsf_core.noise import round_seeds
    from ttsf_core.verifiers.imagestats import ImageStatsVerifier

    config = small_config(output.parent, output_dir=str(output), search_args={"search_rounds": 2})
    run_dir = output / "tiny_flux" / "imagestats" / "overall_score" / digest(legacy_identity(config))
    write_json(run_dir / "config.json", {"identity": legacy_identity(config), "config": config.model_dump(mode="json")})
    generator, verifier = CandidateGenerator(pipe, resolve(config)), ImageStatsVerifier(config.verifier_args)
    for search_round in (1, 2):
        seeds = round_seeds(0, PROMPT, search_round, 2**search_round)
        images = generator.generate(PROMPT, seed_candidates(seeds, 2))
        grades = verifier.score(PROMPT, images)
        folder = run_dir / "prompts" / prompt_dirname(PROMPT)
        candidates = []
        for index, (seed, image, grade) in enumerate(zip(seeds, images, grades)):
            path = folder / f"r{search_round:02d}_c{index:03d}_s{seed}.png"
            candidates.append({"index": index, "seed": seed, "img_path": str(path), "image_sha256": write_png(path, image),
                               "score": grade.score("overall_score"), "grades": grade.model_dump()})
        best = max(range(len(candidates)), key=lambda i: (candidates[i]["score"], -i))
        write_json(folder / f"round_{search_round:02d}.json", {
            "prompt": PROMPT, "prompt_index": 0, "search_round": search_round, "num_noises": len(seeds),
            "best_noise_seed": seeds[best], "best_score": candidates[best]["score"], "choice_of_metric": "overall_score",
            "best_img_path": candidates[best]["img_path"], "best_index": best, "config_hash": "legacy",
            "candidates": candidates})
    return run_dir


def test_a_search_begun_in_the_old_layout_is_imported_not_redone(tmp_path, tiny_pipe):
    legacy = _write_legacy_run(tmp_path / "out", tiny_pipe)
    assert CliRunner().invoke(main, ["report", str(legacy)]).exit_code == 0  # still readable as it is
    output = _run_threads(tmp_path, "--search_rounds", "2")
    assert f"imported 6 images and 6 grades of this search from {legacy}" in output
    assert "Nothing to do" in output and "(0 images generated, 0 graded)" in output
    fresh = _run_threads(tmp_path / "fresh", "--search_rounds", "2")
    assert "generated 6 images and graded 6" in fresh

    def records(root: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in root.rglob("round_*.json") if legacy not in p.parents}

    assert records(tmp_path / "out") == records(tmp_path / "fresh" / "out")  # byte for byte a fresh run's records


def test_export_writes_tt_scale_flux_layout_its_tools_read(tmp_path, tiny_flux_dir):
    import re as regex

    from ttsf_core.usecases.export import prompt_to_filename

    _run_threads(tmp_path, "--search_rounds", "2")
    run_dir = next((tmp_path / "out").rglob("config.json")).parent
    result = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "tt")])
    assert result.exit_code == 0 and "Exported 2 rounds" in result.output, result.output
    # What tt-scale-flux's process_results.py globs and parses.
    pattern = regex.compile(r"prompt@(.+?)_hash@([^_]+)_i@(\d+)_s@(\d+)\.json")
    files = sorted((tmp_path / "tt").glob("*.json"))
    assert len(files) == 2 and all(pattern.search(f.name) and "hash" in f.name for f in files)
    assert all(f.with_suffix(".png").is_file() for f in files)
    datapoint = json.loads(files[0].read_text())
    assert datapoint["prompt"] == PROMPT and isinstance(datapoint["best_noise_seed"], int)
    assert set(datapoint["best_score"]) == {"explanation", "score"} and datapoint["choice_of_metric"] == "overall_score"
    assert files[0].name.startswith(prompt_to_filename(PROMPT) + "_i@")
