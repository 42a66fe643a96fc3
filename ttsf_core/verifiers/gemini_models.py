"""What ttsf knows of each Gemini model: whether Google still serves it, how it thinks, what it takes.

Read on 2026-12-03 with the project's search tool (docs corpus), from:
- the models page (https://ai.google.dev/gemini-api/docs/models): Gemini 3.8 Flash is the newest
  stable Flash model; 3.7 and 3.6 Flash the previous ones; 3.5 Flash-Lite and 3.1 Flash-Lite the
  low-cost ones; 3.1 Pro a preview;
- "What's new in Gemini 3.5 Flash" (https://ai.google.dev/gemini-api/docs/whats-new-gemini-3.5):
  gemini-3.5-flash is deprecated and its requests are forwarded to gemini-3.6-flash;
- the deprecations page (https://ai.google.dev/gemini-api/docs/deprecations) and Firebase's notice:
  the Gemini 2.0 Flash and Flash-Lite models were shut down on 2026-06-01 (404 NOT_FOUND); since
  2026-12-01 gemini-2.5-flash is answered by gemini-3.5-flash-lite and gemini-2.5-pro by
  gemini-3.8-flash, at those models' prices;
- thinking levels per model (Vertex AI "Thinking" page and each model's page): 3.5 Flash takes
  MINIMAL..HIGH (default MEDIUM); 3.x Flash-Lite MINIMAL..HIGH (default MINIMAL); 3.1 Pro LOW..HIGH
  (default HIGH); 3.7 and 3.8 Flash refuse MINIMAL with 400 INVALID_ARGUMENT (LOW, MEDIUM, HIGH);
  the 2.5 models take a thinking budget instead (Flash and Flash-Lite 0 = off, Pro at least 128);
- Google's guidance for Gemini 3: keep temperature at its default 1.0 (so ttsf does not send one);
  older models keep ttsf's temperature 0;
- media resolution (Gemini 3): an image costs about 280 / 560 / 1120 tokens at LOW / MEDIUM / HIGH,
  1120 by default.
Model ids move every few months: a model not listed here still works, with its own thinking default,
and a setting it refuses stops the run at its first request with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The default grader: Google's newest stable Flash model (read 2026-12-03, see above). Everything that
# names the default (help, errors, README, prefect.yaml, docs) takes it from here; a test checks them.
DEFAULT_GEMINI_MODEL = "gemini-3.8-flash"
API_KEY_ENV = "GEMINI_API_KEY"
THINKING_LEVELS = ("minimal", "low", "medium", "high")  # lowest first
MEDIA_RESOLUTIONS = ("low", "medium", "high")
# A thinking level asked of a 2.5 model (which takes a budget of thinking tokens instead).
LEVEL_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
GEMINI3_IMAGE_TOKENS = {"low": 280, "medium": 560, "high": 1120, None: 1120}
OLDER_IMAGE_TOKENS = 258  # Gemini 2.x: one 258-token tile per image up to 384 px


@dataclass(frozen=True)
class GeminiModel:
    """A model family, by its id prefix: how it thinks and what it takes."""

    prefix: str
    served: bool = True  # False: Google answers 404 NOT_FOUND
    thinking: str = "level"  # "level" (Gemini 3), "budget" (2.5) or "none" (2.0)
    levels: tuple[str, ...] = THINKING_LEVELS  # accepted thinking levels, lowest first
    min_budget: int = 0  # "budget": the least thinking it takes (0: none at all)
    media_resolution: bool = True
    gemini3: bool = True  # temperature left at its default 1.0, Gemini 3 image tokens
    replacement: str | None = None  # what Google recommends instead (for a model it no longer serves)
    notes: tuple[str, ...] = field(default=())

    def lowest_level(self) -> str | None:
        return self.levels[0] if self.thinking == "level" and self.levels else None

    def image_tokens(self, resolution: str | None) -> int:
        return GEMINI3_IMAGE_TOKENS[resolution] if self.gemini3 else OLDER_IMAGE_TOKENS


_NO_MINIMAL = ("low", "medium", "high")
KNOWN_MODELS: tuple[GeminiModel, ...] = (
    GeminiModel("gemini-3.8-flash", levels=_NO_MINIMAL),
    GeminiModel("gemini-3.7-flash", levels=_NO_MINIMAL),
    GeminiModel("gemini-3.6-flash"),
    GeminiModel("gemini-3.5-flash"),  # forwarded to gemini-3.6-flash
    GeminiModel("gemini-3.5-flash-lite"),
    GeminiModel("gemini-3.1-flash-lite"),
    GeminiModel("gemini-3.1-pro", levels=_NO_MINIMAL),
    GeminiModel("gemini-3-flash"),
    GeminiModel("gemini-3-pro", levels=("low", "high")),
    GeminiModel("gemini-2.5-flash", thinking="budget", gemini3=False),
    GeminiModel("gemini-2.5-flash-lite", thinking="budget", gemini3=False),
    GeminiModel("gemini-2.5-pro", thinking="budget", min_budget=128, gemini3=False),
    GeminiModel("gemini-2.0-flash", served=False, thinking="none", media_resolution=False, gemini3=False,
                replacement=DEFAULT_GEMINI_MODEL),
    GeminiModel("gemini-2.0-flash-lite", served=False, thinking="none", media_resolution=False, gemini3=False,
                replacement="gemini-3.5-flash-lite"),
)


def known_model(model: str) -> GeminiModel | None:
    """The family of `model` (exact id or the longest listed prefix of it), or None when ttsf does not
    know it."""
    name = model.removeprefix("models/")
    found = [entry for entry in KNOWN_MODELS if name == entry.prefix or name.startswith(entry.prefix + "-")]
    return max(found, key=lambda entry: len(entry.prefix)) if found else None


def sent_settings(model: str, thinking_level: str | None, media_resolution: str | None) -> dict:
    """What ttsf sends for this model and these choices: a temperature of 0 to models before Gemini 3,
    none (None: the model's default, 1.0) to Gemini 3 and to models not listed here (newer ones);
    a thinking level or budget; a media resolution. Raises ValueError naming the setting when the model
    does not take it."""
    entry = known_model(model)
    sent: dict = {"temperature": 0.0 if entry is not None and not entry.gemini3 else None}
    if thinking_level is not None or entry is not None:
        sent |= _thinking(model, entry, thinking_level)
    if media_resolution is not None:
        if entry is not None and not entry.media_resolution:
            raise ValueError(f"--verifier_media_resolution (verifier_args.media_resolution): received "
                             f"{media_resolution!r}, allowed: unset ({model} takes no media resolution)")
        sent["media_resolution"] = media_resolution
    return sent


def _thinking(model: str, entry: GeminiModel | None, level: str | None) -> dict:
    if entry is None:  # not known here: the asked level as it is (a refusal stops the run at once)
        return {"thinking_level": level}
    if entry.thinking == "none":
        if level is not None:
            raise ValueError(f"--verifier_thinking_level (verifier_args.thinking_level): received {level!r}, "
                             f"allowed: unset ({model} does not think)")
        return {}
    if entry.thinking == "budget":
        return {"thinking_budget": entry.min_budget if level in (None, "minimal") else
                max(entry.min_budget, LEVEL_BUDGETS[level])}
    if level is not None and level not in entry.levels:
        raise ValueError(f"--verifier_thinking_level (verifier_args.thinking_level): received {level!r}, allowed: "
                         f"{', '.join(entry.levels)} (the levels {model} takes)")
    return {"thinking_level": level or entry.lowest_level()}


# `ttsf estimate`'s stated default for a grade, until the output folder holds measured ones: the answer
# (six aspects with their explanations) and the thinking at each level, in tokens. A model ttsf does not
# know thinks as it does by default: counted as "medium".
TYPICAL_ANSWER_TOKENS = 400
TYPICAL_THOUGHT_TOKENS = {"minimal": 0, "low": 150, "medium": 600, "high": 1500}
CHARS_PER_TOKEN = 4


def typical_tokens(model: str, thinking_level: str | None, media_resolution: str | None,
                   text_chars: int) -> dict[str, int]:
    """The tokens ttsf expects one grading request to take (prompt, image, thought, output)."""
    entry = known_model(model)
    try:
        sent = sent_settings(model, thinking_level, media_resolution)
    except ValueError:
        sent = {}
    image = entry.image_tokens(media_resolution) if entry else GEMINI3_IMAGE_TOKENS[media_resolution]
    if "thinking_level" in sent and sent["thinking_level"]:
        thought = TYPICAL_THOUGHT_TOKENS[sent["thinking_level"]]
    elif "thinking_budget" in sent:
        thought = min(sent["thinking_budget"], TYPICAL_THOUGHT_TOKENS["high"])
    else:
        thought = TYPICAL_THOUGHT_TOKENS["medium"] if entry is None else 0
    return {"prompt_tokens": -(-text_chars // CHARS_PER_TOKEN) + image, "image_tokens": image,
            "thought_tokens": thought, "output_tokens": TYPICAL_ANSWER_TOKENS}
