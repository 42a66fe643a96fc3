"""QwenVerifier over a tiny random Qwen2.5-VL built offline, saved, and loaded back by the verifier.

The real path runs end to end: from_pretrained of model and processor, chat template, image
processor, left-padded batched generate(), decoding of the new tokens, parse_grades. Random weights
answer garbage, which must raise VerifierError naming the image. For the success path a logits
processor (the verifier's `logits_processor` hook) forces the tiny model to emit a chosen valid JSON
answer, picked by the number of image tokens in each row, so answers differ per image and input order
is checked through batching and padding.

The processor is injected three ways: the image-only processor class as the `processor=` keyword,
options={"processor": "image_only"}, and the default "auto" (the stock AutoProcessor cannot load this
folder without a video processor, so the verifier falls back to the image-only one).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import METRIC_NAMES, Grades, VerifierConfigError, VerifierError, parse_grades
from ttsf_core.verifiers.qwen import (
    DEFAULT_MODEL,
    QwenVerifier,
    grading_instructions,
    grading_messages,
    image_only_processor_class,
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# A trimmed Qwen2-VL chat template: default system turn, images as vision_start/image_pad/vision_end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "a red lighthouse on a cliff at dusk"

# Image sizes -> image tokens: patch 14, merge 2, so (h/14)*(w/14)/4 tokens: 56x56 -> 4, 112x56 -> 8, 112x112 -> 16.
SIZES = {4: (56, 56), 8: (112, 56), 16: (112, 112)}
# The answer forced for each image-token count: ints, floats and an explanation with braces and quotes.
FORCED_SCORES = {4: 2, 8: 5.5, 16: 9.25}


def answer_for(count: int) -> str:
    score = FORCED_SCORES[count]
    grades = {name: {"explanation": f"{count} tokens {{ok}} \"fine\"", "score": score} for name in METRIC_NAMES}
    return json.dumps(grades)


def image(count: int, colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", SIZES[count], colour)


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE trained on the very texts the test sends and forces: short sequences, fast steps.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        max_token_length=16,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [grading_instructions(PROMPT), "system\nYou are a helpful assistant.\nuser\nassistant\n"]
    corpus += [answer_for(count) for count in FORCED_SCORES] * 5
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    """A tiny random Qwen2.5-VL checkpoint folder (model + tokenizer + image processor + chat template)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    )
    processor = image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)

    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            # head_dim 8 -> 4 rotary frequencies split over (temporal, height, width).
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]

    folder = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # Name the stock processor class, as a real checkpoint folder does.
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            if "processor_class" in data:
                data["processor_class"] = "Qwen2_5_VLProcessor"
                path.write_text(json.dumps(data, indent=2))
    return str(folder)


class ForceAnswer:
    """A logits processor forcing each row's answer, chosen by how many image tokens the row holds.

    Rows whose image-token count has no answer are left to the random model (garbage).
    """

    def __init__(self, tokenizer, answers: dict[int, str]):
        self.image_pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.answers = {count: tokenizer.encode(text, add_special_tokens=False) for count, text in answers.items()}
        assert all(tokenizer.decode(ids) == answers[c] for c, ids in self.answers.items())
        self.calls = 0

    def _generated(self, ids: list[int]) -> int:
        width = len(self.header)
        for start in range(len(ids) - width, -1, -1):
            if ids[start : start + width] == self.header:
                return len(ids) - (start + width)
        raise AssertionError("no assistant header in the row")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls += 1
        for row in range(input_ids.shape[0]):
            ids = input_ids[row].tolist()
            answer = self.answers.get(ids.count(self.image_pad_id))
            if answer is None:
                continue
            step = self._generated(ids)
            token = answer[step] if step < len(answer) else self.eos_id
            scores[row] = -math.inf
            scores[row, token] = 0.0
        return scores

    @property
    def longest(self) -> int:
        return max(len(ids) for ids in self.answers.values())


def _args(folder: str, **kwargs) -> VerifierArgs:
    return VerifierArgs(name="qwen", model_name=folder, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen)


# -- load -> generate -> parse -----------------------------------------------------------------
def test_random_model_answer_raises_verifier_error_naming_the_image(tiny_qwen):
    verifier = QwenVerifier(_args(tiny_qwen, max_new_tokens=6), processor=image_only_processor_class())
    assert verifier.model is None  # construction loads nothing
    with pytest.raises(VerifierError) as caught:
        verifier.score(PROMPT, [image(4), image(16)])
    assert type(caught.value) is VerifierError
    assert caught.value.image_index == 0
    assert "image 0" in str(caught.value)
    assert "max_new_tokens=6" in str(caught.value)  # garbage that never ended says so
    assert verifier.model is not None and verifier.processor.tokenizer.padding_side == "left"
    assert str(verifier.model.device) == "cpu" and verifier.model.dtype == torch.float32


def test_forced_valid_answers_come_back_as_grades_in_input_order(tiny_qwen, tokenizer):
    force = ForceAnswer(tokenizer, {count: answer_for(count) for count in FORCED_SCORES})
    verifier = QwenVerifier(
        _args(tiny_qwen, max_new_tokens=force.longest + 4, options={"batch_size": 2, "processor": "image_only"}),
        logits_processor=[force],
    )
    # Mixed sizes inside each batch: rows of different lengths, left padded.
    order = [16, 4, 8, 4]
    grades = verifier.score(PROMPT, [image(count) for count in order])
    assert force.calls > 0  # the real generate() ran
    assert len(grades) == len(order) and all(isinstance(g, Grades) for g in grades)
    for count, grade in zip(order, grades):
        assert grade.scores() == {name: float(FORCED_SCORES[count]) for name in METRIC_NAMES}
        assert grade.root["overall_score"].explanation == f'{count} tokens {{ok}} "fine"'


def test_a_bad_answer_in_a_later_batch_names_its_own_index(tiny_qwen, tokenizer):
    # Default processor "auto": the stock processor cannot load here, so the image-only one is used.
    force = ForceAnswer(tokenizer, {4: answer_for(4), 8: answer_for(8)})  # 16-token images: garbage
    verifier = QwenVerifier(_args(tiny_qwen, max_new_tokens=force.longest + 4, options={"batch_size": 2}), logits_processor=[force])
    with pytest.raises(VerifierError) as caught:
        verifier.score(PROMPT, [image(4), image(8), image(16), image(4)])
    assert caught.value.image_index == 2
    assert "image 2" in str(caught.value)
    assert type(verifier.processor).__name__ == "ImageOnlyQwenProcessor"


def test_empty_image_list_loads_nothing_and_bad_inputs_raise(tiny_qwen):
    verifier = QwenVerifier(_args(tiny_qwen))
    assert verifier.score(PROMPT, []) == []
    assert verifier.model is None
    with pytest.raises(ValueError, match="prompt"):
        verifier.score("  ", [image(4)])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        verifier.score(PROMPT, ["not an image"])


# -- configuration, checked at construction ---------------------------------------------------
def test_defaults_and_overrides_resolve_without_loading():
    verifier = QwenVerifier(VerifierArgs(name="qwen"))
    assert verifier.name == "qwen" and verifier.model_name == DEFAULT_MODEL == QwenVerifier.DEFAULT_MODEL
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert verifier.device == expected_device
    assert verifier.dtype_name == ("bfloat16" if expected_device == "cuda" else "float32")
    assert verifier.batch_size == 4
    assert QwenVerifier(VerifierArgs(name="qwen", device="cpu", options={"torch_dtype": "bf16"})).dtype_name == "bfloat16"
    assert QwenVerifier(VerifierArgs(name="qwen", model_name="someone/Qwen2.5-VL-3B-Instruct")).model_name == (
        "someone/Qwen2.5-VL-3B-Instruct"
    )


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"options": {"batch_sise": 2}}, "batch_sise"),
        ({"options": {"batch_size": 0}}, "batch_size"),
        ({"options": {"torch_dtype": "int8"}}, "torch_dtype"),
        ({"options": {"processor": "videos"}}, "processor"),
        ({"model_name": "/no/such/qwen/folder"}, "model_name"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs, fragment):
    with pytest.raises(VerifierConfigError, match=fragment):
        QwenVerifier(VerifierArgs(name="qwen", **kwargs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_requested_without_cuda_is_refused():
    with pytest.raises(VerifierConfigError, match="no CUDA device is visible here"):
        QwenVerifier(VerifierArgs(name="qwen", device="cuda"))


def test_registry_builds_the_qwen_verifier():
    from ttsf_core.verifiers.base import Verifier
    from ttsf_core.verifiers.registry import build_verifier

    verifier = build_verifier(VerifierArgs(name="qwen", device="cpu"))
    assert isinstance(verifier, QwenVerifier) and isinstance(verifier, Verifier)


def test_grading_instructions_name_every_aspect_the_scale_and_the_json_shape():
    text = grading_instructions("a cat holding a sign that says {schema}")
    assert "<prompt>a cat holding a sign that says {schema}</prompt>" in text  # the prompt stays literal, as data
    for name in METRIC_NAMES:
        assert f'"{name}": {{"explanation": ' in text
        assert f"- {name}: " in text
    assert "from 0 to 10" in text and '"score"' in text
    message = grading_messages("a cat")
    assert message[0]["role"] == "user"
    assert [part["type"] for part in message[0]["content"]] == ["image", "text"]


# -- the parser on realistic answers -----------------------------------------------------------
def _answer(scores: dict[str, object] | None = None, drop: str | None = None) -> dict:
    scores = scores or {}
    return {
        name: {"explanation": f"About {name.replace('_', ' ')}.", "score": scores.get(name, 7)}
        for name in METRIC_NAMES
        if name != drop
    }


GOOD = json.dumps(_answer({"overall_score": 8.5, "accuracy_to_prompt": 10, "creativity_and_originality": 0}))


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "```json\n" + json.dumps(_answer({"overall_score": 8.5, "accuracy_to_prompt": 10, "creativity_and_originality": 0}), indent=2) + "\n```",
        "Here is my evaluation of the image:\n```json\n" + GOOD + "\n```\nI hope this helps.",
        "Sure! " + GOOD + " Let me know if you need more detail.",
        json.dumps(_answer({"overall_score": 8.5, "accuracy_to_prompt": 10.0, "creativity_and_originality": 0.0})),
    ],
)
def test_parser_accepts_realistic_answers(text):
    grades = parse_grades(text, 3)
    assert grades.score("overall_score") == 8.5
    assert grades.score("accuracy_to_prompt") == 10.0
    assert grades.score("creativity_and_originality") == 0.0
    assert grades.score("visual_quality_and_realism") == 7.0


@pytest.mark.parametrize(
    "text, fragment",
    [
        (GOOD[: len(GOOD) // 2], ""),  # truncated mid-answer
        ("```json\n" + GOOD[:-40], ""),  # truncated inside the fence
        (json.dumps(_answer(drop="consistency_and_cohesion")), "consistency_and_cohesion"),
        (json.dumps(_answer({"overall_score": 11})), "overall_score"),
        (json.dumps(_answer({"visual_quality_and_realism": -0.5})), "visual_quality_and_realism"),
        (json.dumps(_answer({"accuracy_to_prompt": "high"})), "accuracy_to_prompt"),
        (json.dumps({"grades": _answer()}), ""),  # wrapped in an extra object
        (json.dumps({**_answer(), "aesthetics": {"explanation": "x", "score": 5}}), "aesthetics"),
        ("I cannot evaluate this image.", "no JSON"),
        ("", "empty"),
        ("   \n", "empty"),
        (None, "empty"),
    ],
)
def test_parser_refuses_broken_answers_naming_the_image(text, fragment):
    with pytest.raises(VerifierError) as caught:
        parse_grades(text, 5)
    assert caught.value.image_index == 5
    assert "image 5" in str(caught.value)
    assert fragment in str(caught.value)
