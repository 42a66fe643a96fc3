"""The scalar rewards as a user meets them: clip, pickscore, laion_aesthetic, image_reward.

Every model here is tiny, built offline under a fixed seed (tests/tiny_rewards.py), saved, and loaded
back by the verifier through its real path (from_pretrained, or ImageReward's checkpoint + key mapping).
The colour CLIP has hand-set weights, so its scores are known in advance; the aesthetic head and
ImageReward are checked against float64 computations written independently of the verifiers.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tiny_rewards
from conftest import small_config
from ttsf_core.resolve import resolve
from ttsf_core.config import ConfigError, VerifierArgs
from ttsf_core.verifiers.aesthetic import LaionAestheticVerifier
from ttsf_core.verifiers.base import VerifierConfigError
from ttsf_core.verifiers.clip import PICKSCORE_MODEL, PICKSCORE_PROCESSOR, ClipScoreVerifier, PickScoreVerifier
from ttsf_core.verifiers.image_reward import (
    CLIP_MEAN,
    CLIP_STD,
    REWARD_MEAN,
    REWARD_STD,
    ImageRewardVerifier,
    map_checkpoint,
    preprocess,
)
from ttsf_core.verifiers.registry import build_verifier, check_metric

pytestmark = pytest.mark.timeout(300)
RED, GREEN, BLUE, PURPLE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255)
LOCAL = {"clip": ClipScoreVerifier, "pickscore": PickScoreVerifier, "laion_aesthetic": LaionAestheticVerifier,
         "image_reward": ImageRewardVerifier}


def solid(colour, size=(32, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


def halves(left, right, size=(32, 32)) -> Image.Image:
    image = solid(left, size)
    image.paste(solid(right, (size[0] // 2, size[1])), (size[0] // 2, 0))
    return image


def make(name: str, folder=None, **kwargs):
    folder = folder if folder is not None else {
        "clip": tiny_rewards.tiny_clip, "pickscore": tiny_rewards.tiny_clip,
        "laion_aesthetic": tiny_rewards.tiny_aesthetic, "image_reward": tiny_rewards.tiny_image_reward}[name]()
    kwargs.setdefault("device", "cpu")
    return build_verifier(VerifierArgs(name=name, model_name=str(folder), **kwargs))


def only(grades, metric):
    return [g.score(metric) for g in grades]


# -- CLIPScore and PickScore on a CLIP whose embeddings are known ------------------------------------
@pytest.fixture(scope="module")
def colour_clip():
    return tiny_rewards.tiny_clip("colour")


def test_clipscore_prefers_the_image_the_prompt_describes(colour_clip):
    verifier = make("clip", colour_clip)
    images = [solid(RED), solid(PURPLE), halves(RED, BLUE), solid(BLUE), solid(GREEN)]
    red = only(verifier.score("a red square", images), "clip_score")
    # cos = 1, 1/sqrt(2) (purple = red + blue), 1/sqrt(2) (half red, half blue), 0, 0; CLIPScore = 100 * max(cos, 0).
    assert red == pytest.approx([100.0, 100 / math.sqrt(2), 100 / math.sqrt(2), 0.0, 0.0], abs=1e-3)
    blue = only(verifier.score("a blue square", images), "clip_score")
    assert blue == pytest.approx([0.0, 100 / math.sqrt(2), 100 / math.sqrt(2), 100.0, 0.0], abs=1e-3)
    both = only(verifier.score("a red and blue square", images), "clip_score")
    assert both == pytest.approx([100 / math.sqrt(2), 100.0, 100.0, 100 / math.sqrt(2), 0.0], abs=1e-3)
    [grades] = verifier.score("a red square", [solid(RED)])
    assert grades.root["clip_score"].explanation.startswith("CLIPScore 100.00 = 100 * max(cos, 0), cosine 1.0000")


def test_clipscore_in_hessel_et_al_form_scales_by_w(colour_clip):
    verifier = make("clip", colour_clip, options={"weight": 2.5, "prefix": "A photo depicts"})
    scores = only(verifier.score("a red square", [solid(RED), solid(PURPLE)]), "clip_score")
    assert scores == pytest.approx([2.5, 2.5 / math.sqrt(2)], abs=1e-4)


def test_pickscore_is_the_logit_scale_times_the_cosine(colour_clip):
    verifier = make("pickscore", colour_clip)
    assert verifier.processor_name == str(colour_clip)  # another model_name: its own processor
    scores = only(verifier.score("a blue square", [solid(BLUE), halves(RED, BLUE), solid(RED)]), "pickscore")
    assert scores == pytest.approx([100.0, 100 / math.sqrt(2), 0.0], abs=1e-3)  # logit_scale.exp() = 100


def test_clipscore_clamps_a_negative_cosine_that_pickscore_keeps(colour_clip):
    # "black" points away from every colour: cos(red, black) = -1/sqrt(3).
    images = [solid(RED), solid(PURPLE)]
    assert only(make("clip", colour_clip).score("a black square", images), "clip_score") == [0.0, 0.0]
    picks = only(make("pickscore", colour_clip).score("a black square", images), "pickscore")
    assert picks == pytest.approx([-100 / math.sqrt(3), -100 * 2 / math.sqrt(6)], abs=1e-3)


def test_clipscore_is_pickscores_cosine_floored_at_zero_on_a_random_clip():
    """The same CLIP under both: where the cosine is positive, CLIPScore = 100 * PickScore / logit_scale.exp()."""
    folder = tiny_rewards.tiny_clip("random")
    images = [solid(colour) for colour in [RED, GREEN, BLUE, PURPLE, (255, 255, 0), (250, 250, 250), (128, 64, 0)]]
    clip, pick = make("clip", folder), make("pickscore", folder)
    for prompt in ["a red square", "a photo of a dog", "blue and green"]:
        clip_scores = only(clip.score(prompt, images), "clip_score")
        pick_scores = only(pick.score(prompt, images), "pickscore")
        scale = float(pick._state["model"].logit_scale.detach().exp())
        assert clip_scores == pytest.approx([100 * max(p / scale, 0.0) for p in pick_scores], abs=1e-3)


def test_clipscore_prefix_is_prepended_to_the_prompt():
    folder = tiny_rewards.tiny_clip("random")
    images = [solid(RED), solid(BLUE)]
    prefixed = only(make("clip", folder, options={"prefix": "A photo depicts"}).score("a red square", images), "clip_score")
    spelled = only(make("clip", folder).score("A photo depicts a red square", images), "clip_score")
    plain = only(make("clip", folder).score("a red square", images), "clip_score")
    assert prefixed == pytest.approx(spelled, abs=1e-5)
    assert prefixed != pytest.approx(plain, abs=1e-3)


def test_pickscore_uses_the_laion_processor_only_for_its_own_weights():
    default = PickScoreVerifier(VerifierArgs(name="pickscore", device="cpu"))
    assert (default.model_name, default.processor_name) == (PICKSCORE_MODEL, PICKSCORE_PROCESSOR)
    chosen = PickScoreVerifier(VerifierArgs(name="pickscore", device="cpu", options={"processor": "my/processor"}))
    assert chosen.processor_name == "my/processor"
    assert not default.loaded and not chosen.loaded


# -- LAION aesthetic: the head's math by hand ---------------------------------------------------
def test_laion_aesthetic_equals_a_hand_computation_of_the_mlp():
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = tiny_rewards.tiny_aesthetic()
    images = [solid(RED), halves(GREEN, BLUE), Image.fromarray(np.arange(32 * 48 * 3, dtype=np.uint8).reshape(32, 48, 3))]
    scores = only(make("laion_aesthetic", folder).score("ignored", images), "laion_aesthetic_score")

    processor = CLIPImageProcessor.from_pretrained(folder)
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    with torch.no_grad():
        embeds = model(**processor(images=images, return_tensors="pt")).image_embeds.double().numpy()
    head = torch.load(folder / "aesthetic-model.pth", weights_only=True)
    x = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
    for index in (0, 2, 4, 6, 7):  # five affine layers, no activation (dropouts are off at inference)
        x = x @ head[f"layers.{index}.weight"].double().numpy().T + head[f"layers.{index}.bias"].double().numpy()
    assert scores == pytest.approx(x[:, 0].tolist(), abs=1e-5)
    assert len(set(np.round(scores, 6))) == 3


def test_laion_aesthetic_ignores_the_prompt_and_says_what_it_measures():
    verifier = make("laion_aesthetic")
    images = [solid(RED), solid(BLUE)]
    first, second = verifier.score("a red square", images), verifier.score("something else entirely", images)
    assert [g.scores() for g in first] == [g.scores() for g in second]
    explanation = first[0].root["laion_aesthetic_score"].explanation
    assert explanation.startswith(f"LAION aesthetic score {first[0].score('laion_aesthetic_score'):.3f} (")
    assert "L2-normalised CLIP image embedding" in explanation


def test_laion_aesthetic_head_option_and_a_head_that_does_not_fit(tmp_path):
    folder = tiny_rewards.tiny_aesthetic()
    images = [solid(RED), solid(GREEN)]
    named = make("laion_aesthetic", folder, options={"head": str(folder / "aesthetic-model.pth")})
    assert [g.scores() for g in named.score("p", images)] == [g.scores() for g in make("laion_aesthetic", folder).score("p", images)]
    tiny_rewards.write_aesthetic_head(tmp_path / "eight.pth", 8)
    wrong = make("laion_aesthetic", folder, options={"head": str(tmp_path / "eight.pth")})
    with pytest.raises(VerifierConfigError, match=r"does not fit a 16-dimensional CLIP embedding: layers.0.weight is "
                                                  r"\(1024, 8\), the model needs \(1024, 16\)"):
        wrong.score("p", images)
    with pytest.raises(VerifierConfigError, match="options.head: received"):
        make("laion_aesthetic", folder, options={"head": str(tmp_path / "missing.pth")})


# -- ImageReward: an independent float64 forward pass of the reference code ----------------------
def reference_image_reward(state: dict, med: dict, vision_heads: int, input_ids, attention_mask, pixels):
    """BLIP's vit.py + med.py + ImageReward's MLP and standardisation, written from the reference code,
    on the reference-named tensors, in float64."""
    s = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    gelu = F.gelu

    def ln(x, name, eps):
        return F.layer_norm(x, (x.shape[-1],), s[f"{name}.weight"], s[f"{name}.bias"], eps)

    def linear(x, name):
        return F.linear(x, s[f"{name}.weight"], s[f"{name}.bias"])

    v = "blip.visual_encoder"
    pixels = pixels.double()
    batch, width = pixels.shape[0], s[f"{v}.cls_token"].shape[-1]
    patch = s[f"{v}.patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, s[f"{v}.patch_embed.proj.weight"], s[f"{v}.patch_embed.proj.bias"], stride=patch)
    x = torch.cat([s[f"{v}.cls_token"].expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    x = x + s[f"{v}.pos_embed"][:, : x.shape[1]]
    tokens = x.shape[1]
    depth = 1 + max(int(k.split(".")[3]) for k in s if k.startswith(f"{v}.blocks."))
    for block in range(depth):
        b = f"{v}.blocks.{block}"
        h = ln(x, f"{b}.norm1", 1e-6)
        qkv = linear(h, f"{b}.attn.qkv").reshape(batch, tokens, 3, vision_heads, width // vision_heads).permute(2, 0, 3, 1, 4)
        q, k, val = qkv[0], qkv[1], qkv[2]
        attention = ((q @ k.transpose(-2, -1)) * (width // vision_heads) ** -0.5).softmax(dim=-1)
        x = x + linear((attention @ val).transpose(1, 2).reshape(batch, tokens, width), f"{b}.attn.proj")
        x = x + linear(gelu(linear(ln(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image = ln(x, f"{v}.norm", 1e-6)

    t, eps, heads = "blip.text_encoder", med["layer_norm_eps"], med["num_attention_heads"]
    ids = input_ids.expand(batch, -1)
    length = ids.shape[1]
    h = s[f"{t}.embeddings.word_embeddings.weight"][ids] + s[f"{t}.embeddings.position_embeddings.weight"][:length]
    h = ln(h, f"{t}.embeddings.LayerNorm", eps)
    self_mask = (1.0 - attention_mask.expand(batch, -1)[:, None, None, :].double()) * -10000.0

    def attend(prefix, hidden, context, mask):
        def split(y):
            return y.reshape(batch, y.shape[1], heads, -1).permute(0, 2, 1, 3)

        q, k, val = (split(linear(src, f"{prefix}.self.{n}")) for n, src in
                     (("query", hidden), ("key", context), ("value", context)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        merged = (scores.softmax(dim=-1) @ val).permute(0, 2, 1, 3).reshape(batch, hidden.shape[1], -1)
        return ln(linear(merged, f"{prefix}.output.dense") + hidden, f"{prefix}.output.LayerNorm", eps)

    for index in range(med["num_hidden_layers"]):
        layer = f"{t}.encoder.layer.{index}"
        a = attend(f"{layer}.attention", h, h, self_mask)
        a = attend(f"{layer}.crossattention", a, image, 0.0)
        h = ln(linear(gelu(linear(a, f"{layer}.intermediate.dense")), f"{layer}.output.dense") + a, f"{layer}.output.LayerNorm", eps)
    raw = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        raw = linear(raw, f"mlp.layers.{index}")
    return ((raw[:, 0] - REWARD_MEAN) / REWARD_STD).tolist()


def test_image_reward_equals_the_reference_forward_pass():
    import json

    folder = tiny_rewards.tiny_image_reward()
    verifier = make("image_reward", folder, options={"batch_size": 2})
    images = [solid(RED), halves(GREEN, BLUE, (48, 32)), Image.fromarray(np.arange(40 * 36 * 3, dtype=np.uint8).reshape(40, 36, 3))]
    rewards = only(verifier.score("a red square", images), "image_reward")

    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    med = json.loads((folder / "med_config.json").read_text())
    # bert-base-uncased ids in the tiny vocab: [CLS]=2 a=5 red=6 square=9 [SEP]=3, padded with [PAD]=0 to 35.
    ids = torch.tensor([[2, 5, 6, 9, 3] + [0] * 30])
    mask = (ids != 0).long()
    model, tokenizer = verifier._state
    encoded = tokenizer("a red square", padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert encoded["input_ids"].tolist() == ids.tolist()
    pixels = torch.stack([preprocess(image, 32) for image in images])
    vision_heads = tiny_rewards.TINY_IMAGE_REWARD["vision"]["width"] // 64
    expected = reference_image_reward(state, med, vision_heads, ids, mask, pixels)
    assert rewards == pytest.approx(expected, abs=1e-5)
    assert len(set(np.round(rewards, 5))) == 3


def test_image_reward_standardises_with_the_published_constants():
    assert (REWARD_MEAN, REWARD_STD) == (0.16717362830052426, 1.0333394966054072)
    verifier = make("image_reward")
    images = [solid(RED), solid(BLUE)]
    grades = verifier.score("a red square", images)
    model, tokenizer = verifier._state
    encoded = tokenizer("a red square", padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        raw = model.raw_rewards(encoded["input_ids"], encoded["attention_mask"],
                                torch.stack([preprocess(image, model.image_size) for image in images])).tolist()
    assert only(grades, "image_reward") == pytest.approx([(r - REWARD_MEAN) / REWARD_STD for r in raw], abs=1e-6)
    explanation = grades[0].root["image_reward"].explanation
    assert explanation.startswith(f"ImageReward {grades[0].score('image_reward'):.3f} = (raw {raw[0]:.4f} - 0.1672) / 1.0333")


def test_image_reward_preprocessing_is_torchvisions_resize_and_centre_crop():
    # 96x32, thirds red | green | blue: shorter side already 32, so no resize; the centre crop is the green third.
    image = Image.new("RGB", (96, 32), RED)
    image.paste(solid(GREEN), (32, 0))
    image.paste(solid(BLUE), (64, 0))
    pixels = preprocess(image, 32)
    expected = [(c / 255 - m) / s for c, m, s in zip(GREEN, CLIP_MEAN, CLIP_STD)]
    assert pixels.shape == (3, 32, 32)
    assert pixels.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-6)
    assert pixels.std(dim=(1, 2)).max().item() < 1e-6
    # 300x200 at 224: resized to int(224 * 300 / 200) = 336 wide, then cropped 56 pixels in from the left.
    wide = Image.fromarray(np.tile(np.arange(300, dtype=np.uint8)[None, :, None], (200, 1, 3)))
    resized = np.asarray(wide.resize((336, 224), Image.Resampling.BICUBIC), dtype=np.float64)[:, 56:280, 0]
    assert preprocess(wide, 224)[0].numpy() == pytest.approx((resized / 255 - CLIP_MEAN[0]) / CLIP_STD[0], abs=1e-5)


def test_image_reward_checkpoint_problems_are_named(tmp_path):
    import shutil

    folder = tiny_rewards.tiny_image_reward()
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    parts, left = map_checkpoint(state)
    assert left == [] and set(parts) == {"vision", "text", "head"}
    assert "encoder.layers.1.self_attn.projection.weight" in parts["vision"] and "post_layernorm.bias" in parts["vision"]

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    del state["blip.visual_encoder.blocks.1.norm2.weight"]
    torch.save({"model": state}, broken / "ImageReward.pt")  # wrapped, as some checkpoints are
    with pytest.raises(VerifierConfigError, match=r"vision weights do not fit: missing encoder.layers.1.layer_norm2.weight"):
        make("image_reward", broken).score("p", [solid(RED)])
    (broken / "ImageReward.pt").unlink()
    with pytest.raises(VerifierConfigError, match=r"image_reward: checkpoint: .* holds no 'ImageReward.pt'"):
        make("image_reward", broken).score("p", [solid(RED)])


# -- options, devices, loading ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOCAL))
def test_unknown_options_are_refused_naming_them_and_what_is_allowed(name):
    with pytest.raises(VerifierConfigError, match=r"options: received unknown 'colour', allowed: batch_size, "
                                                  r"torch_dtype, model_name"):
        LOCAL[name](VerifierArgs(name=name, device="cpu", options={"colour": "red"}))


@pytest.mark.parametrize("name", sorted(LOCAL))
@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "options.batch_size: received 0, allowed: a positive integer"),
    ({"batch_size": True}, "options.batch_size: received True, allowed: a positive integer"),
    ({"batch_size": "4"}, "options.batch_size: received '4', allowed: a positive integer"),
    ({"torch_dtype": "int8"}, "options.torch_dtype: received 'int8', allowed: fp16, bf16, fp32"),
    ({"model_name": "/no/such/folder"}, "model_name: received '/no/such/folder', allowed: a hub id or an existing local folder"),
])
def test_bad_option_values_are_refused_before_anything_loads(name, options, message):
    with pytest.raises(VerifierConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LOCAL[name](VerifierArgs(name=name, device="cpu", options=options))


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_construction_is_cheap_and_settings_are_resolved(name):
    verifier = LOCAL[name](VerifierArgs(name=name, device="cpu", options={"torch_dtype": "fp16", "batch_size": 5}))
    assert not verifier.loaded
    assert verifier.batch_size == 5 and verifier.device == "cpu"
    assert verifier.dtype_name == "float32"  # half precision is for GPUs; the CPU computes in fp32
    assert verifier.score("p", []) == [] and not verifier.loaded
    assert verifier.metrics == (verifier.default_metric,) == (LOCAL[name].metric,)
    with pytest.raises(VerifierConfigError, match="options.model_name: received '/elsewhere' beside model_name='/tmp'"):
        LOCAL[name](VerifierArgs(name=name, model_name="/tmp", device="cpu", options={"model_name": "/elsewhere"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA where there is none")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_is_refused(device):
    for name, cls in LOCAL.items():
        expected = rf"device: received '{device}' \(no CUDA device is visible here\), allowed: auto, cpu"
        with pytest.raises(VerifierConfigError, match=expected):
            cls(VerifierArgs(name=name, device=device))


def test_device_none_resolves_to_what_this_machine_has():
    verifier = ClipScoreVerifier(VerifierArgs(name="clip"))
    assert verifier.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert verifier.dtype_name == ("float16" if torch.cuda.is_available() else "float32")


def test_a_folder_without_a_model_fails_on_first_use_with_a_typed_error(tmp_path):
    for name in LOCAL:
        verifier = LOCAL[name](VerifierArgs(name=name, model_name=str(tmp_path), device="cpu"))
        with pytest.raises(VerifierConfigError, match=f"{name}: .*{tmp_path.name}"):
            verifier.score("p", [solid(RED)])


def test_non_pil_inputs_and_prompts_are_value_errors():
    verifier = make("clip")
    with pytest.raises(ValueError, match=r"images\[1\]: received str, allowed: a PIL image"):
        verifier.score("p", [solid(RED), "red.png"])
    with pytest.raises(ValueError, match="prompt: received NoneType, allowed: a text"):
        verifier.score(None, [solid(RED)])
    with pytest.raises(ValueError, match="images: received Image, allowed: a list of PIL images"):
        verifier.score("p", solid(RED))


def test_the_model_loads_once_when_threads_score_together():
    verifier = make("laion_aesthetic")
    real_load, loads = verifier._load, []

    def counting_load():
        loads.append(threading.get_ident())
        time.sleep(0.2)
        return real_load()

    verifier._load = counting_load
    results = [None] * 4

    def work(index):
        results[index] = verifier.score("p", [solid(RED), solid(BLUE)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert all([g.scores() for g in r] == [g.scores() for g in results[0]] for r in results)


# -- the registry and the command line ---------------------------------------------------------
def test_a_rubric_metric_is_refused_for_clip_in_one_line():
    with pytest.raises(ConfigError) as refused:
        check_metric(VerifierArgs(name="clip", choice_of_metric="overall_score"))
    assert str(refused.value) == ("choice_of_metric: received 'overall_score', allowed: one of clip_score "
                                  "(the metrics of clip)")
    from click.testing import CliRunner

    from ttsf.cli import main

    result = CliRunner().invoke(main, ["run", "--prompt", "a red square", "--verifier_to_use", "clip",
                                       "--choice_of_metric", "overall_score"], env={"GEMINI_API_KEY": ""})
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ttsf: error: --choice_of_metric")
    assert "allowed: one of clip_score" in lines[0]


def test_each_scalar_verifier_defaults_to_its_own_metric():
    from ttsf_core.verifiers.registry import default_metric_for, metrics_for

    expected = {"clip": "clip_score", "pickscore": "pickscore", "laion_aesthetic": "laion_aesthetic_score",
                "image_reward": "image_reward"}
    for name, metric in expected.items():
        assert metrics_for(name) == [metric] and default_metric_for(name) == metric
    assert metrics_for("clip,image_reward,laion_aesthetic") == ["ensemble", "clip_score", "image_reward",
                                                                "laion_aesthetic_score"]


# -- end to end: a tiny search graded by a scalar reward, and by an ensemble --------------------
def _search(tmp_path, pipe, verifier_args):
    from ttsf_core.usecases import runner
    from ttsf_core.engine.generate import CandidateGenerator

    config = small_config(tmp_path, verifier_args=verifier_args, search_args={"search_rounds": 2})
    prepared, outcome = runner.run(config, generator=CandidateGenerator(pipe, resolve(config)))
    outcome.raise_first()
    return prepared, outcome


def test_a_tiny_search_graded_by_clip_records_clip_score(tmp_path, tiny_pipe):
    folder = tiny_rewards.tiny_clip("random")
    prepared, outcome = _search(tmp_path, tiny_pipe, {"name": "clip", "model_name": str(folder)})
    assert [record.num_noises for record in outcome.records] == [2, 4]
    for record in outcome.records:
        assert record.choice_of_metric == "clip_score"
        scores = [c.grades.score("clip_score") for c in record.candidates]
        assert all(set(c.grades.metrics()) == {"clip_score"} for c in record.candidates)
        assert record.best_score == max(scores) and record.best_index == scores.index(max(scores))
    assert "/clip/clip_score/" in str(prepared.layout.run_dir).replace("\\", "/")


def test_a_tiny_search_graded_by_an_ensemble_selects_by_mean_rank(tmp_path, tiny_pipe):
    options = {"clip": {"model_name": str(tiny_rewards.tiny_clip("random"))},
               "laion_aesthetic": {"model_name": str(tiny_rewards.tiny_aesthetic())}}
    _, outcome = _search(tmp_path, tiny_pipe, {"name": "clip,laion_aesthetic", "options": options})
    for record in outcome.records:
        assert record.choice_of_metric == "ensemble"
        columns = [[c.grades.score(metric) for c in record.candidates] for metric in ("clip_score", "laion_aesthetic_score")]
        assert all(set(c.grades.metrics()) == {"clip_score", "laion_aesthetic_score"} for c in record.candidates)

        def ranks(values):  # 1 = best; ties share their mean rank
            return [1 + sum(other > value for other in values) + (sum(other == value for other in values) - 1) / 2
                    for value in values]

        mean_rank = [sum(r) / len(r) for r in zip(*(ranks(column) for column in columns))]
        best = min(range(len(mean_rank)), key=lambda i: (mean_rank[i], i))
        assert record.best_index == best
        n = len(mean_rank)
        assert [c.score for c in record.candidates] == pytest.approx([1 - (m - 1) / (n - 1) for m in mean_rank], abs=1e-6)
