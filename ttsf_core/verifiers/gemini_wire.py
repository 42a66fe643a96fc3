"""What goes over the wire to Gemini and comes back, through the google-genai SDK: the request's
config (structured output by the rubric's schema, the settings sent), its parts, and an answer's usage.
Imported only when a Gemini verifier talks to the API (validating or resolving a config never does)."""

from __future__ import annotations

from typing import Any

from google import genai
from google.genai import types
from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import RubricGrades, Usage
from ttsf_core.verifiers.remote import png_bytes

_MEDIA_MODALITIES = ("IMAGE", "VIDEO")


def request_config(sent: dict[str, Any], args: VerifierArgs) -> types.GenerateContentConfig:
    """The generation config of every request: structured output by the rubric's schema, and what
    `sent_settings` decided for the model (a setting that is None is not sent)."""
    thinking = None
    if "thinking_level" in sent:
        thinking = types.ThinkingConfig(thinking_level=types.ThinkingLevel(sent["thinking_level"].upper()))
    elif "thinking_budget" in sent:
        thinking = types.ThinkingConfig(thinking_budget=sent["thinking_budget"])
    resolution = sent.get("media_resolution")
    return types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=gemini_response_schema(),
        max_output_tokens=args.max_new_tokens,
        temperature=sent.get("temperature"),  # None: the model's default (Gemini 3's guidance: 1.0)
        seed=args.seed,  # verifier_args.seed; None: not sent
        thinking_config=thinking,
        media_resolution=types.MediaResolution(f"MEDIA_RESOLUTION_{resolution.upper()}") if resolution else None,
    )


def response_usage(response: types.GenerateContentResponse, model: str) -> tuple[Usage, ...]:
    """The answer's usage as the API reported it: the model version that answered, its prompt tokens
    (text and media; the image or video ones among them), thought tokens and answer tokens."""
    meta = response.usage_metadata
    if meta is None:
        return (Usage(model=model, model_version=response.model_version),)
    media = sum(detail.token_count or 0 for detail in meta.prompt_tokens_details or ()
                if str(getattr(detail.modality, "value", detail.modality)) in _MEDIA_MODALITIES)
    return (Usage(model=model, model_version=response.model_version, prompt_tokens=meta.prompt_token_count or 0,
                  image_tokens=media, thought_tokens=meta.thoughts_token_count or 0,
                  output_tokens=meta.candidates_token_count or 0),)


def served_flash_models(client: genai.Client, limit: int = 200) -> list[str] | None:
    """The Flash models the API lists for generateContent today, newest first (None when it cannot say)."""
    try:
        names = []
        for model in client.models.list(config={"page_size": 100}):
            if len(names) >= limit:
                break
            name = (model.name or "").removeprefix("models/")
            if "flash" in name and "generateContent" in (model.supported_actions or ["generateContent"]) \
                    and not any(word in name for word in ("image", "tts", "live", "audio", "embedding")):
                names.append(name)
        return sorted(names, reverse=True)
    except Exception:  # noqa: BLE001 - only a suggestion: the refusal itself is what matters
        return None


def image_part(image: Image.Image) -> types.Part:
    return types.Part.from_bytes(data=png_bytes(image), mime_type="image/png")


def video_part(mp4: bytes) -> types.Part:
    return types.Part.from_bytes(data=mp4, mime_type="video/mp4")


def gemini_response_schema() -> dict[str, Any]:
    """The rubric's JSON schema (RubricGrades) without `additionalProperties`.

    RubricGrades forbids extra fields, so pydantic emits `additionalProperties: false`; the SDK forwards it
    as `additional_properties`, which the Gemini Developer API rejects with 400 INVALID_ARGUMENT
    ("Unknown name"). parse_grades still rejects extra fields on our side.
    """
    return _without_key(RubricGrades.model_json_schema(), "additionalProperties")


def _without_key(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _without_key(v, key) for k, v in node.items() if k != key}
    if isinstance(node, list):
        return [_without_key(v, key) for v in node]
    return node
