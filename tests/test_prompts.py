import json

import pandas as pd
import pytest

from ttsf_core.config import ConfigError, PromptSource
from ttsf_core.prompts import load_prompts

SHARED = "../shared/data/open_image_preferences_prompts.txt"


def _source(**fields):
    return PromptSource(**fields)


def test_one_prompt_wins_over_the_dataset():
    assert load_prompts(_source(prompt="  a cat  ", num_prompts=None)) == ["a cat"]


def test_txt_skips_blank_lines_and_takes_the_first_n(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first\n\n\nsecond\nfirst\nthird\n")
    assert load_prompts(_source(dataset=str(path), num_prompts=2)) == ["first", "second"]
    assert load_prompts(_source(dataset=str(path), num_prompts="all")) == ["first", "second", "third"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tabular_files_read_the_named_column(tmp_path, suffix):
    frame = pd.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"]})
    path = tmp_path / f"p{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False),
     ".jsonl": lambda: path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records"))),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    assert load_prompts(_source(dataset=str(path), prompt_column="text", num_prompts="all")) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="prompt_column: received 'prompt'"):
        load_prompts(_source(dataset=str(path), num_prompts="all"))


def test_the_shared_real_prompts_load(request):
    path = request.config.rootpath / SHARED
    if not path.is_file():
        pytest.skip("shared data not beside this checkout")
    prompts = load_prompts(_source(dataset=str(path), num_prompts=5))
    assert len(prompts) == 5 and all(prompts)


def test_unreadable_and_empty_datasets_are_named(tmp_path):
    with pytest.raises(ConfigError, match="dataset: received .*missing.txt"):
        load_prompts(_source(dataset=str(tmp_path / "missing.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no non-empty prompts"):
        load_prompts(_source(dataset=str(empty)))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="could not be read"):
        load_prompts(_source(dataset=str(bad)))


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="dataset: received 'nobody/no-such-dataset'"):
        load_prompts(_source(dataset="nobody/no-such-dataset"))
