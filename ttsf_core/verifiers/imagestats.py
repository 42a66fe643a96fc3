"""A model-free verifier: classical no-reference image statistics, mapped onto the grading schema.

What it judges: technical properties of the pixels only (sharpness, contrast, colourfulness,
exposure, tonal range). What it does NOT judge: the prompt. It never reads the prompt, so it cannot
tell whether the image shows what was asked for; `accuracy_to_prompt` is a neutral constant
(NEUTRAL_SCORE) for every image, and its explanation says so. It needs no model, no network and no
GPU, and is deterministic: the same pixels always give the same Grades. Use it for offline runs,
tests, or as a cheap baseline, not as a judge of prompt fidelity or aesthetics.

Raw measures (`measure(image)`, on the image downscaled by area averaging so its longest side is at
most `max_side` pixels, default 512; smaller images are used as they are). Luminance Y = 0.299 R +
0.587 G + 0.114 B on 0..255.
  laplacian_variance   variance of the 4-neighbour Laplacian of Y (interior pixels)
  rms_contrast         standard deviation of Y / 255
  colourfulness        Hasler & Süsstrunk (2003): rg = R - G, yb = (R + G)/2 - B,
                       M = sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)
  mean_luminance       mean of Y / 255
  clipped_dark         fraction of pixels with Y <= 2
  clipped_bright       fraction of pixels with Y >= 253
  entropy_bits         Shannon entropy of the 256-bin histogram of Y (0..8 bits)

Measure scores, each 0..10, monotone and saturating:
  sharpness      10 * min(1, log10(1 + laplacian_variance) / log10(1 + 1000))
                 (variance 1 -> 1.0, 10 -> 3.5, 100 -> 6.7, >= 1000 -> 10)
  contrast       10 * min(1, rms_contrast / 0.25)
  colourfulness  10 * min(1, M / 100)   (H&S: 33 "moderately", 59 "quite", 82 "highly", 109 "extremely")
  exposure       10 * (1 - ((mean_luminance - 0.5) / 0.5)^2) * max(0, 1 - 2 * (clipped_dark + clipped_bright))
                 (mid-grey mean and nothing clipped -> 10; mean 0 or 1, or half the pixels clipped -> 0)
  entropy        10 * entropy_bits / 8

Schema metrics:
  visual_quality_and_realism       mean(sharpness, exposure)
  consistency_and_cohesion         mean(exposure, contrast)
  creativity_and_originality       mean(colourfulness, entropy)
  emotional_or_thematic_resonance  mean(contrast, colourfulness)
  accuracy_to_prompt               NEUTRAL_SCORE (5.0): not measured
  overall_score                    0.4 visual_quality + 0.2 consistency + 0.2 creativity + 0.2 emotional
                                   (accuracy_to_prompt is left out: it is not a measurement)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import SCORE_MAX, SCORE_MIN, AspectGrade, Grades, VerifierConfigError, checked_images

DEFAULT_MAX_SIDE = 512
NEUTRAL_SCORE = 5.0
SHARPNESS_SATURATION = 1000.0  # Laplacian variance (on 0..255 luminance) that scores 10
CONTRAST_SATURATION = 0.25  # RMS contrast (on 0..1 luminance) that scores 10
COLOURFULNESS_SATURATION = 100.0  # Hasler & Süsstrunk M that scores 10
DARK_CLIP = 2.0  # luminance (0..255) at or below which a pixel counts as crushed
BRIGHT_CLIP = 253.0  # luminance (0..255) at or above which a pixel counts as blown
OVERALL_WEIGHTS: dict[str, float] = {
    "visual_quality_and_realism": 0.4,
    "consistency_and_cohesion": 0.2,
    "creativity_and_originality": 0.2,
    "emotional_or_thematic_resonance": 0.2,
}
PROMPT_NOT_READ = (
    "Not judged: the imagestats verifier does not read the prompt and cannot judge accuracy to it; "
    f"every image gets the neutral constant {NEUTRAL_SCORE:g} so this aspect neither favours nor penalises any image."
)
KNOWN_OPTIONS = ("max_side",)


def _luma_rgb(image: Image.Image, max_side: int) -> np.ndarray:
    rgb = image.convert("RGB")
    width, height = rgb.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.float64)


def measure(image: Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> dict[str, float]:
    """The raw measurements of one image (see the module docstring for definitions)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: received {type(image).__name__}, allowed: a PIL image")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image: received a {image.width}x{image.height} image, allowed: at least 1x1 pixels")
    pixels = _luma_rgb(image, max_side)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue

    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        laplacian = (
            luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
        )
        laplacian_variance = float(laplacian.var())
    else:
        laplacian_variance = 0.0

    rg = red - green
    yb = 0.5 * (red + green) - blue
    colourfulness = math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2)

    histogram = np.bincount(np.clip(np.rint(luma), 0, 255).astype(np.int64).ravel(), minlength=256)
    probabilities = histogram[histogram > 0] / luma.size
    entropy_bits = float(-(probabilities * np.log2(probabilities)).sum()) + 0.0  # + 0.0: no -0.0

    return {
        "laplacian_variance": laplacian_variance,
        "rms_contrast": float(luma.std() / 255.0),
        "colourfulness": float(colourfulness),
        "mean_luminance": float(luma.mean() / 255.0),
        "clipped_dark": float((luma <= DARK_CLIP).mean()),
        "clipped_bright": float((luma >= BRIGHT_CLIP).mean()),
        "entropy_bits": entropy_bits,
    }


def _clip10(value: float) -> float:
    return float(min(SCORE_MAX, max(SCORE_MIN, value)))


def measure_scores(measures: dict[str, float]) -> dict[str, float]:
    """Each raw measurement mapped to 0..10 (sharpness, contrast, colourfulness, exposure, entropy)."""
    sharpness = 10.0 * math.log10(1.0 + measures["laplacian_variance"]) / math.log10(1.0 + SHARPNESS_SATURATION)
    contrast = 10.0 * measures["rms_contrast"] / CONTRAST_SATURATION
    colourfulness = 10.0 * measures["colourfulness"] / COLOURFULNESS_SATURATION
    balance = 1.0 - ((measures["mean_luminance"] - 0.5) / 0.5) ** 2
    clipped = measures["clipped_dark"] + measures["clipped_bright"]
    exposure = 10.0 * balance * max(0.0, 1.0 - 2.0 * clipped)
    entropy = 10.0 * measures["entropy_bits"] / 8.0
    return {
        "sharpness": _clip10(sharpness),
        "contrast": _clip10(contrast),
        "colourfulness": _clip10(colourfulness),
        "exposure": _clip10(exposure),
        "entropy": _clip10(entropy),
    }


def grade_image(image: Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> Grades:
    """Grades for one image from its statistics; the explanations state the raw measurements."""
    m = measure(image, max_side)
    s = measure_scores(m)
    said = {
        "sharpness": f"sharpness {s['sharpness']:.2f}/10 (Laplacian variance {m['laplacian_variance']:.1f})",
        "exposure": (
            f"exposure {s['exposure']:.2f}/10 (mean luminance {m['mean_luminance']:.3f}, "
            f"{100 * m['clipped_dark']:.1f}% crushed dark, {100 * m['clipped_bright']:.1f}% blown bright)"
        ),
        "contrast": f"contrast {s['contrast']:.2f}/10 (RMS contrast {m['rms_contrast']:.3f})",
        "colourfulness": f"colourfulness {s['colourfulness']:.2f}/10 (Hasler-Süsstrunk M {m['colourfulness']:.1f})",
        "entropy": f"tonal entropy {s['entropy']:.2f}/10 (luminance histogram entropy {m['entropy_bits']:.2f} bits)",
    }

    def pair(first: str, second: str) -> tuple[float, str]:
        return (s[first] + s[second]) / 2.0, f"Mean of {said[first]} and {said[second]}."

    measured = {
        "visual_quality_and_realism": pair("sharpness", "exposure"),
        "consistency_and_cohesion": pair("exposure", "contrast"),
        "creativity_and_originality": pair("colourfulness", "entropy"),
        "emotional_or_thematic_resonance": pair("contrast", "colourfulness"),
    }
    overall = sum(weight * measured[name][0] for name, weight in OVERALL_WEIGHTS.items())
    weights = ", ".join(f"{weight:g} {name}" for name, weight in OVERALL_WEIGHTS.items())
    grades: dict[str, Any] = {
        name: AspectGrade(explanation=text, score=round(_clip10(score), 4)) for name, (score, text) in measured.items()
    }
    grades["accuracy_to_prompt"] = AspectGrade(explanation=PROMPT_NOT_READ, score=NEUTRAL_SCORE)
    grades["overall_score"] = AspectGrade(
        explanation=f"Weighted mean of the measured aspects ({weights}); accuracy_to_prompt is not measured and left out.",
        score=round(_clip10(overall), 4),
    )
    return Grades(grades)


class ImageStatsVerifier:
    """Grades images by classical no-reference statistics; ignores the prompt (see the module docstring)."""

    name = "imagestats"
    score_max = SCORE_MAX  # every measure is clipped to the rubric scale
    batch_size = 16  # no model to batch for; bigger chunks only mean fewer jobs

    def __init__(self, args: VerifierArgs):
        self.args = args
        unknown = sorted(set(args.options) - set(KNOWN_OPTIONS))
        if unknown:
            raise VerifierConfigError(
                f"verifier_args.options: received unknown {', '.join(map(repr, unknown))}, allowed: {', '.join(KNOWN_OPTIONS)}"
            )
        if args.model_name is not None:
            raise VerifierConfigError(
                f"verifier_args.model_name: received {args.model_name!r}, allowed: None (imagestats uses no model)"
            )
        max_side = args.options.get("max_side", DEFAULT_MAX_SIDE)
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 3:
            raise VerifierConfigError(f"verifier_args.options.max_side: received {max_side!r}, allowed: an integer >= 3")
        self.max_side = max_side

    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]:
        """One Grades per image, in input order. `prompt` is not read (see accuracy_to_prompt)."""
        return [grade_image(image, self.max_side) for image in checked_images(images)]
