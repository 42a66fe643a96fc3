import re
import json

import pandas as pd
import pytest

from ttsf_core.config import ConfigError, PromptSource
from ttsf_core.prompts import count_note, load_prompts, read_prompts

SHARED = "../shared/data/open_image_preferences_prompts.txt"


def _source(**fields):
    return PromptSource(**fields)


def test_one_prompt_wins_over_the_dataset_and_is_kept_as_given():
    assert load_prompts(_source(prompt="  a cat\r\non a mat  ", num_prompts=None)) == ["  a cat\r\non a mat  "]


def test_every_prompt_is_searched_exactly_as_the_dataset_has_it(tmp_path):
    """Line breaks inside a field, CR, tabs, leading blanks, Unicode line separators: kept as they are."""
    frame = pd.DataFrame({"prompt": ["a cat\r\non a mat", "\ttabbed  ", "one\u2028two", "1984", "NA"]})
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    assert load_prompts(_source(dataset=str(path), num_prompts="all")) == frame["prompt"].tolist()
    text = tmp_path / "p.txt"
    text.write_bytes("first\r\nsecond \u2028 half\r\n\r\n  third\n".encode())
    assert load_prompts(_source(dataset=str(text), num_prompts="all")) == ["first", "second \u2028 half", "  third"]


@pytest.mark.parametrize("suffix,where", [(".txt", "line 3"), (".csv", "row 2 (prompt)"), (".jsonl", "row 2 (prompt)")])
def test_a_prompt_that_would_have_to_change_is_refused_with_its_place(tmp_path, suffix, where):
    prompts = ["a cat", "a dog with a NUL \x00 inside", "an owl"]
    path = tmp_path / f"p{suffix}"
    if suffix == ".txt":
        path.write_text("a cat\n\n" + prompts[1] + "\n" + prompts[2] + "\n")
    elif suffix == ".csv":
        pd.DataFrame({"prompt": prompts}).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    with pytest.raises(ConfigError, match=re.escape(f"({where}: it holds the control character '\\x00' at character 17;")):
        load_prompts(_source(dataset=str(path), num_prompts="all"))


def test_the_count_of_a_datasets_prompts_is_said(tmp_path):
    path = tmp_path / "five.txt"
    path.write_text("".join(f"prompt {n}\n" for n in range(5)))
    read = read_prompts(_source(dataset=str(path)))  # tt-scale-flux's default: 2
    assert (read.prompts, read.available) == (["prompt 0", "prompt 1"], 5)
    assert count_note(_source(dataset=str(path)), read) == (
        f"searching 2 of the 5 prompts of {str(path)!r} (the first 2; --num_prompts all for every one)")
    assert count_note(_source(dataset=str(path), num_prompts="all"), read_prompts(_source(dataset=str(path),
                                                                                         num_prompts="all"))) is None


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
