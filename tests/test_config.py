import json

import pytest

from ttsf_core.config import ConfigError, RunConfig, build_config, merge
from ttsf_core.config_files import read_config_file
from ttsf_core.resolve import resolve

TT_SCALE_FLUX_CONFIG = {
    "pretrained_model_name_or_path": "black-forest-labs/FLUX.1-dev",
    "torch_dtype": "bf16",
    "pipeline_call_args": {"height": 1024, "width": 1024, "max_sequence_length": 512,
                           "guidance_scale": 3.5, "num_inference_steps": 50},
    "verifier_args": {"name": "gemini", "max_new_tokens": 800, "choice_of_metric": "overall_score"},
    "search_args": {"search_method": "random", "search_rounds": 4},
}


def test_defaults_follow_tt_scale_flux_flux_config():
    config = RunConfig()
    assert config.pretrained_model_name_or_path == "black-forest-labs/FLUX.1-dev"
    assert config.torch_dtype == "bf16"
    args = config.pipeline_call_args
    assert (args.height, args.width, args.guidance_scale, args.num_inference_steps, args.max_sequence_length) == (
        1024, 1024, 3.5, 50, 512)
    assert config.search_args.search_rounds == 4
    assert [resolve(config).search.pool_size(r) for r in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert config.verifier_args.name == "gemini" and resolve(config).metric == "overall_score"
    assert config.prompts.num_prompts == 2


def test_tt_scale_flux_json_loads_as_it_is(tmp_path):
    path = tmp_path / "flux_dev.json"
    path.write_text(json.dumps(TT_SCALE_FLUX_CONFIG | {"num_prompts": 5}))
    config = build_config(read_config_file(path))
    assert config == build_config(TT_SCALE_FLUX_CONFIG | {"prompts": {"num_prompts": 5}})


@pytest.mark.parametrize("suffix,text", [
    (".toml", "seed = 9\n[search_args]\nsearch_rounds = 2\n"),
    (".yaml", "seed: 9\nsearch_args:\n  search_rounds: 2\n"),
])
def test_toml_and_yaml_set_any_field(tmp_path, suffix, text):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    config = build_config(read_config_file(path))
    assert config.seed == 9 and config.search_args.search_rounds == 2


def test_overrides_beat_the_file():
    config = build_config(merge(TT_SCALE_FLUX_CONFIG, {"search_args": {"search_rounds": 2}}))
    assert config.search_args.search_rounds == 2 and config.search_args.search_method == "random"


def test_config_is_frozen():
    with pytest.raises(Exception):
        RunConfig().seed = 3


def test_tiny_flux_has_cpu_defaults_under_explicit_values():
    config = build_config({"pretrained_model_name_or_path": "tiny-flux", "pipeline_call_args": {"height": 32}})
    assert config.torch_dtype == "fp32"
    assert (config.pipeline_call_args.height, config.pipeline_call_args.width) == (32, 128)


def test_identity_ignores_what_does_not_change_images():
    base = RunConfig()
    same = build_config({"output_dir": "elsewhere", "verifier_args": {"max_concurrency": 3}, "prompts": {"num_prompts": 9}})
    assert resolve(base).identity_hash == resolve(same).identity_hash
    assert resolve(base).identity_hash != resolve(build_config({"seed": 1})).identity_hash


@pytest.mark.parametrize("data,message", [
    ({"search_args": {"search_rounds": 0}}, "search_args.search_rounds: received 0, allowed: an integer >= 1 and <= 16"),
    ({"prompts": {"num_prompts": "-2"}}, "num_prompts: received '-2', allowed: a positive integer or 'all'"),
    ({"prompts": {"num_prompts": 0}}, "num_prompts: received 0"),
    ({"prompts": {"prompt": "   "}}, "prompts.prompt: received '   ', allowed: a non-empty text"),
    ({"torch_dtype": "int8"}, "torch_dtype: received 'int8', allowed: one of bf16, fp16, fp32"),
    # Other call arguments are checked against the pipeline's __call__ before the model loads (test_pipelines).
    ({"pipeline_call_args": {"latents": [0.5]}}, "pipeline_call_args.latents: received [0.5], allowed: any argument "
                                                 "of the pipeline's __call__ except those ttsf passes itself"),
    ({"search_args": {"search_method": "beam"}}, "search_args.search_method: received 'beam', allowed: one of random, zero-order"),
    ({"search_args": {"search_method": "zero-order", "threshold": 0}},
     "search_args.threshold: received 0, allowed: a number > 0 and < 1"),
    ({"search_args": {"draft_steps": "few"}}, "search_args.draft_steps: received 'few', allowed: an integer >= 1"),
    ({"search_args": {"draft_steps": 50}}, "search_args.draft_steps: received 50, allowed: an integer >= 1 and < "
                                           "pipeline_call_args.num_inference_steps (50)"),
    ({"prompts": {"num_prompts": 2.5}}, "prompts.num_prompts: received 2.5, allowed: an integer or 'all'"),
    ({"use_low_gpu_vram": "maybe"}, "use_low_gpu_vram: received 'maybe', allowed: true or false"),
])
def test_bad_values_name_the_field_what_was_received_and_what_is_allowed(data, message):
    """Validating the data (build_config) or resolving it (what only the strategy's own model, the
    pipeline's steps or a file can say): either way one line naming the field."""
    with pytest.raises(ConfigError) as error:
        resolve(build_config(data))
    assert message in str(error.value)


def test_each_bad_field_is_one_line_even_when_pydantic_reports_it_twice():
    with pytest.raises(ConfigError) as error:
        build_config({"seed": "x", "prompts": {"num_prompts": 2.5}})
    assert str(error.value).splitlines() == [
        "seed: received 'x', allowed: an integer >= 0 and < 9223372036854775808",
        "prompts.num_prompts: received 2.5, allowed: an integer or 'all'",
    ]
    with pytest.raises(ConfigError) as error:
        resolve(build_config({"search_args": {"beam": 1, "initial_pool_size": 0}}))
    assert str(error.value).splitlines() == [  # the strategy's own model: its fields, nobody else's
        "search_args.initial_pool_size: received 0, allowed: an integer >= 1 and <= 1024",
        "search_args.beam: received unknown field 'beam', allowed: search_rounds, draft_steps, draft_keep, "
        "search_method, initial_pool_size",
    ]


def test_a_field_of_another_strategy_is_refused_unless_it_is_left_at_its_default():
    with pytest.raises(ConfigError, match=r"search_args.threshold: received 0.8 with search_method 'random', allowed: "
                                          r"unset \(threshold belongs to zero-order; random takes"):
        resolve(build_config({"search_args": {"threshold": 0.8}}))
    # config.json files of earlier versions spell out every strategy's fields at their defaults: they load
    old = resolve(build_config({"search_args": {"threshold": 0.95, "num_neighbors": 4, "initial_pool_size": 2}}))
    assert old.identity_hash == resolve(RunConfig()).identity_hash


def test_unreadable_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config: received .*nope.json"):
        read_config_file(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="could not be parsed"):
        read_config_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="allowed: a mapping"):
        read_config_file(listing)


def test_the_metric_defaults_to_the_verifiers_own_and_is_checked_against_its_metrics():
    from ttsf_core.verifiers.registry import build_verifier

    assert resolve(build_config({"verifier_args": {"name": "imagestats"}})).metric == "overall_score"
    config = build_config({"verifier_args": {"name": "imagestats", "choice_of_metric": "beauty"}})
    with pytest.raises(ConfigError, match="choice_of_metric: received 'beauty', allowed: one of accuracy_to_prompt"):
        build_verifier(config.verifier_args)
