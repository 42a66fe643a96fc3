"""Every built-in verifier that runs offline keeps the one contract (tests/verifier_contract.py): imagestats,
qwen (tiny, forced answers), gemini (the fake server over real HTTP), clip, pickscore, laion_aesthetic,
image_reward (tiny models through their real loading paths), the README's plugin example, and an
ensemble."""

from __future__ import annotations

import pytest
from PIL import Image

import tiny_rewards
from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.registry import build_verifier
from verifier_contract import check_contract, distinct_images

# Fixtures of other test modules, reused as they are.
from test_qwen import FORCED_SCORES, PROMPT as QWEN_PROMPT, ForceAnswer, answer_for, image as qwen_image, tiny_qwen  # noqa: F401
from test_registry import installed_plugin  # noqa: F401

PROMPT = "a red square on a blue photo"
pytestmark = pytest.mark.timeout(300)


def _merged(base: dict, extra: dict | None) -> dict:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in (extra or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _local(name: str, folder) -> callable:
    def make(options=None):
        return build_verifier(VerifierArgs(name=name, model_name=str(folder), device="cpu",
                                           options=_merged({"batch_size": 3}, options)))
    return make


def test_imagestats_keeps_the_contract():
    check_contract(lambda options=None: build_verifier(VerifierArgs(name="imagestats", options=options or {})),
                   PROMPT, distinct_images(5))


def test_clip_keeps_the_contract():
    grades = check_contract(_local("clip", tiny_rewards.tiny_clip("random")), PROMPT, distinct_images(5))
    assert all(set(g.metrics()) == {"clip_score"} for g in grades)


def test_clip_on_the_colour_model_keeps_the_contract():
    check_contract(_local("clip", tiny_rewards.tiny_clip("colour")), "a red square", distinct_images(5))


def test_pickscore_keeps_the_contract():
    check_contract(_local("pickscore", tiny_rewards.tiny_clip("random")), PROMPT, distinct_images(5))


def test_laion_aesthetic_keeps_the_contract():
    check_contract(_local("laion_aesthetic", tiny_rewards.tiny_aesthetic()), PROMPT, distinct_images(5))


def test_image_reward_keeps_the_contract():
    check_contract(_local("image_reward", tiny_rewards.tiny_image_reward()), PROMPT, distinct_images(5))


def test_an_ensemble_keeps_the_contract():
    base = {"clip": {"model_name": str(tiny_rewards.tiny_clip("random")), "batch_size": 2},
            "laion_aesthetic": {"model_name": str(tiny_rewards.tiny_aesthetic())}}

    def make(options=None):
        return build_verifier(VerifierArgs(name="clip,laion_aesthetic", device="cpu", options=_merged(base, options)))

    grades = check_contract(make, PROMPT, distinct_images(4), bad_options={"clip": {"no_such_option": 1}},
                            tolerance=1e-3)
    assert all(set(g.metrics()) == {"clip_score", "laion_aesthetic_score"} for g in grades)


def test_qwen_keeps_the_contract(tiny_qwen):  # noqa: F811 - the fixture imported above
    from transformers import AutoTokenizer

    from ttsf_core.verifiers.qwen import QwenVerifier

    force = ForceAnswer(AutoTokenizer.from_pretrained(tiny_qwen), {count: answer_for(count) for count in FORCED_SCORES})

    def make(options=None):
        return QwenVerifier(VerifierArgs(name="qwen", model_name=tiny_qwen, device="cpu", max_new_tokens=force.longest + 4,
                                         options={"batch_size": 2, "processor": "image_only", **(options or {})}),
                            logits_processor=[force])

    check_contract(make, QWEN_PROMPT, [qwen_image(16), qwen_image(4), qwen_image(8)])


def test_gemini_keeps_the_contract(monkeypatch):
    from fake_gemini import FakeGeminiServer

    monkeypatch.setenv("GEMINI_API_KEY", "contract-key")
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)
    made = []
    with FakeGeminiServer(api_key="contract-key") as server:
        def make(options=None):
            made.append(build_verifier(VerifierArgs(name="gemini", request_timeout_s=10.0,
                                                    options={"base_url": server.url, **(options or {})})))
            return made[-1]

        try:
            check_contract(make, PROMPT, distinct_images(4))
        finally:
            for verifier in made:
                verifier.close()


def test_the_readme_plugin_keeps_the_contract(installed_plugin):  # noqa: F811 - the fixture imported above
    # The README's example takes no options and does not check its inputs: any exception will do.
    grays = [Image.new("RGB", (16, 16), (level, level, level)) for level in (20, 90, 160, 230)]
    check_contract(lambda options=None: build_verifier(VerifierArgs(name="brightness")), "anything", grays,
                   bad_options=None, input_error=Exception)
