"""ImageStatsVerifier: classical image statistics mapped onto the grading schema, no model needed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import METRIC_NAMES, Grades, Verifier, VerifierConfigError
from ttsf_core.verifiers.imagestats import NEUTRAL_SCORE, ImageStatsVerifier, measure, measure_scores
from ttsf_core.verifiers.registry import build_verifier


def scene(size: int = 192, seed: int = 0) -> Image.Image:
    """A sharp, well-exposed, colourful synthetic picture: colour gradients, fine grain, hard-edged shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = np.stack([255 * x, 255 * (1 - y), 255 * (0.5 + 0.5 * np.sin(8 * x + 5 * y))], axis=-1)
    pixels += rng.normal(0, 12, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in range(10):
        draw.rectangle([i * 17, i * 13, i * 17 + 25, i * 13 + 35], fill=(255 * (i % 2), 40 + 15 * i, 220 - 20 * i))
    return image


@pytest.fixture
def verifier() -> ImageStatsVerifier:
    return ImageStatsVerifier(VerifierArgs(name="imagestats"))


def test_sharp_image_beats_its_blurred_copy_on_visual_quality(verifier):
    sharp = scene()
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))
    sharp_grades, blurred_grades = verifier.score("anything", [sharp, blurred])
    assert sharp_grades.score("visual_quality_and_realism") > blurred_grades.score("visual_quality_and_realism") + 2
    assert measure(sharp)["laplacian_variance"] > 10 * measure(blurred)["laplacian_variance"]
    # The blur changes sharpness, not exposure: the gap comes from the sharpness term.
    sharp_scores, blurred_scores = measure_scores(measure(sharp)), measure_scores(measure(blurred))
    assert abs(sharp_scores["exposure"] - blurred_scores["exposure"]) < 0.5
    assert sharp_scores["sharpness"] > blurred_scores["sharpness"]
    assert sharp_grades.score("overall_score") > blurred_grades.score("overall_score")


def test_flat_grey_has_no_colour_and_no_contrast(verifier):
    grey = Image.new("RGB", (96, 64), (128, 128, 128))
    raw = measure(grey)
    assert raw["colourfulness"] == pytest.approx(0.0, abs=1e-9)
    assert raw["rms_contrast"] == pytest.approx(0.0, abs=1e-9)
    assert raw["laplacian_variance"] == pytest.approx(0.0, abs=1e-9)
    scores = measure_scores(raw)
    assert scores["colourfulness"] < 0.1 and scores["contrast"] < 0.1
    assert scores["exposure"] > 9.9  # mid-grey, nothing clipped: exposure itself is fine
    (grades,) = verifier.score("a grey wall", [grey])
    assert grades.score("emotional_or_thematic_resonance") < 0.1  # contrast + colourfulness
    assert grades.score("creativity_and_originality") < 0.1  # colourfulness + entropy
    assert grades.score("overall_score") < grades_of(verifier, scene()).score("overall_score")


def grades_of(verifier, image) -> Grades:
    return verifier.score("p", [image])[0]


def test_all_white_clipped_image_gets_low_exposure(verifier):
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    raw = measure(white)
    assert raw["clipped_bright"] == 1.0 and raw["mean_luminance"] == pytest.approx(1.0)
    assert measure_scores(raw)["exposure"] < 0.5
    assert grades_of(verifier, white).score("visual_quality_and_realism") < 1.0
    # Mostly blown highlights on an otherwise normal picture still lose exposure.
    half_white = scene()
    ImageDraw.Draw(half_white).rectangle([0, 0, 191, 120], fill=(255, 255, 255))
    assert measure_scores(measure(half_white))["exposure"] < measure_scores(measure(scene()))["exposure"] - 3


def test_scores_stay_in_range_for_random_images(verifier):
    rng = np.random.default_rng(7)
    images = []
    for _ in range(12):
        height, width = rng.integers(1, 80, size=2)
        mode = rng.choice(["noise", "flat", "dark", "binary"])
        if mode == "noise":
            pixels = rng.integers(0, 256, (height, width, 3))
        elif mode == "flat":
            pixels = np.broadcast_to(rng.integers(0, 256, 3), (height, width, 3))
        elif mode == "dark":
            pixels = rng.integers(0, 8, (height, width, 3))
        else:
            pixels = rng.integers(0, 2, (height, width, 3)) * 255
        images.append(Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8)))
    images += [Image.new("L", (20, 20), 30), Image.new("RGBA", (20, 20), (10, 200, 30, 0)), Image.new("RGB", (1, 1))]
    for grades in verifier.score("p", images):
        for name in METRIC_NAMES:
            assert 0.0 <= grades.score(name) <= 10.0


def test_same_image_twice_gives_equal_grades(verifier):
    image = scene(seed=3)
    first, second = verifier.score("p", [image, image.copy()])
    assert first == second
    assert verifier.score("p", [image]) == [first]
    assert ImageStatsVerifier(VerifierArgs(name="imagestats")).score("p", [image]) == [first]


def test_results_come_back_in_input_order(verifier):
    images = [scene(), Image.new("RGB", (64, 64), (255, 255, 255)), scene().filter(ImageFilter.GaussianBlur(3)), Image.new("RGB", (64, 64), (128, 128, 128))]
    batch = verifier.score("p", images)
    assert batch == [grades_of(verifier, image) for image in images]
    assert verifier.score("p", images[::-1]) == batch[::-1]
    assert verifier.score("p", []) == []


def test_accuracy_to_prompt_says_it_does_not_read_the_prompt(verifier):
    first = grades_of(verifier, scene())
    other_prompt = verifier.score("a completely different prompt", [scene()])[0]
    assert first == other_prompt  # the prompt changes nothing
    explanation = first.root["accuracy_to_prompt"].explanation
    assert "does not read the prompt" in explanation
    assert first.score("accuracy_to_prompt") == NEUTRAL_SCORE
    assert grades_of(verifier, Image.new("RGB", (8, 8))).score("accuracy_to_prompt") == NEUTRAL_SCORE


def test_explanations_state_the_raw_measurements(verifier):
    image = scene()
    raw = measure(image)
    grades = grades_of(verifier, image)
    assert f"Laplacian variance {raw['laplacian_variance']:.1f}" in grades.root["visual_quality_and_realism"].explanation
    assert f"mean luminance {raw['mean_luminance']:.3f}" in grades.root["consistency_and_cohesion"].explanation
    assert f"M {raw['colourfulness']:.1f}" in grades.root["creativity_and_originality"].explanation
    assert f"RMS contrast {raw['rms_contrast']:.3f}" in grades.root["emotional_or_thematic_resonance"].explanation
    assert "Weighted mean" in grades.root["overall_score"].explanation


def test_large_images_are_measured_at_the_working_size():
    big = scene(size=1024)
    assert measure(big) == measure(big.resize((512, 512), Image.Resampling.BOX))
    assert measure(big, max_side=2048) != measure(big)


def test_configuration_is_checked_and_the_registry_builds_it():
    built = build_verifier(VerifierArgs(name="imagestats", options={"max_side": 256}))
    assert isinstance(built, ImageStatsVerifier) and isinstance(built, Verifier) and built.max_side == 256
    with pytest.raises(VerifierConfigError, match="max_sides"):
        ImageStatsVerifier(VerifierArgs(name="imagestats", options={"max_sides": 3}))
    with pytest.raises(VerifierConfigError, match="max_side"):
        ImageStatsVerifier(VerifierArgs(name="imagestats", options={"max_side": 0}))
    with pytest.raises(VerifierConfigError, match="model_name"):
        ImageStatsVerifier(VerifierArgs(name="imagestats", model_name="some/model"))
    with pytest.raises(ValueError, match=r"images\[1\]"):
        built.score("p", [scene(), "not an image"])
