"""CLIP-based prompt-image rewards: CLIPScore and PickScore. Both are a cosine between CLIP's image and
text embeddings, scaled; they differ in the weights, the scale and the clamp.

clip (metric "clip_score") — CLIPScore, Hessel et al. 2021 (arXiv 2104.08718):
    CLIP-S(c, v) = w * max(cos(E_image(v), E_text(c)), 0)
    The paper uses w = 2.5 with ViT-B/32 and prefixes each caption with "A photo depicts"; the value
    usually reported (torchmetrics' CLIPScore, most text-to-image papers) is w = 100 with no prefix on
    openai/clip-vit-large-patch14. ttsf reports that one by default: clip_score = 100 * max(cos, 0),
    so 0..100 (published evaluations put matching image-prompt pairs around 25-35; not measured
    here). Options `weight` (default 100.0) and
    `prefix` (default "") give the paper's form: model_name="openai/clip-vit-base-patch32",
    options={"weight": 2.5, "prefix": "A photo depicts"}.

pickscore (metric "pickscore") — PickScore, Kirstain et al. 2023 (arXiv 2305.01569), the reference
    code of yuvalkirstain/PickScore: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.
    pickscore = logit_scale.exp() * cos(E_image, E_text), no clamp (logit_scale.exp() is the model's
    learned temperature, read from the checkpoint; CLIP training caps it at 100), so about -100..100
    (the paper's pairs score around 20; not measured here).
    Weights yuvalkirstain/PickScore_v1; processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the one the
    reference code loads), or `options.processor`; with another model_name the processor is read from
    that model's own folder unless `processor` names one.

Both: embeddings as CLIPModel.get_text_features / get_image_features compute them (pooled output
through the projection), L2-normalised in fp32; the prompt is tokenized once per call, padded and
truncated to the text model's positions (77), and encoded once; images go through the checkpoint's
CLIP image processor (resize shortest side, centre crop, normalise) `batch_size` at a time.

Verified offline (tests/test_scalar_verifiers.py): the whole path on tiny CLIPs saved with
save_pretrained and reloaded with from_pretrained — including one whose weights are set by hand so
that its embeddings are known (an image's mean colour, a prompt's colour words), where a red image
scores exactly 100 for "a red square", 100/sqrt(2) for a purple one and 0 for a blue one. Not verified
here: the published checkpoints themselves (no hub access); they are transformers' own CLIPModel
checkpoints, loaded by transformers' own code, so no key mapping of ours is involved.

Options: batch_size (16), torch_dtype (fp16 on GPU; bf16/fp32), model_name (as args.model_name, for
an ensemble member), and weight, prefix (clip) or processor (pickscore).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ttsf_core.verifiers._local import (
    LocalRewardVerifier,
    check_source,
    finite_float,
    load_error,
    rgb,
)
from ttsf_core.verifiers.base import VerifierConfigError

CLIPSCORE_MODEL = "openai/clip-vit-large-patch14"
CLIPSCORE_WEIGHT = 100.0
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class _ClipSimilarity(LocalRewardVerifier):
    """Loads a CLIPModel and its processor; scores cos(image embedding, text embedding)."""

    score_tolerance = 1e-3  # on a 0..100 scale: float32 batching moves the 5th significant digit

    def _processor_source(self) -> str:
        return self.model_name

    def _load(self) -> dict[str, Any]:
        from transformers import CLIPModel, CLIPProcessor

        source = self._processor_source()
        try:
            processor = CLIPProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise load_error(f"{self.name}: processor", source, error) from None
        try:
            model = CLIPModel.from_pretrained(self.model_name, dtype=self.torch_dtype)
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise load_error(f"{self.name}: model", self.model_name, error) from None
        model.to(self.device).eval()
        return {"model": model, "processor": processor,
                "max_length": int(model.config.text_config.max_position_embeddings)}

    def _text_embedding(self, state: dict[str, Any], text: str):
        import torch

        model = state["model"]
        tokens = state["processor"].tokenizer([text], padding=True, truncation=True, max_length=state["max_length"],
                                              return_tensors="pt").to(self.device)
        pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        embedding = model.text_projection(pooled).float()
        return embedding / torch.linalg.vector_norm(embedding, dim=-1, keepdim=True)

    def _cosines(self, state: dict[str, Any], text, images: list[Image.Image]) -> list[float]:
        import torch

        model = state["model"]
        pixels = state["processor"].image_processor(images=[rgb(image) for image in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device, self.torch_dtype)
        pooled = model.vision_model(pixel_values=pixel_values).pooler_output
        embedding = model.visual_projection(pooled).float()
        embedding = embedding / torch.linalg.vector_norm(embedding, dim=-1, keepdim=True)
        return (embedding @ text[0]).tolist()


class ClipScoreVerifier(_ClipSimilarity):
    """CLIPScore: weight * max(cos, 0) (see the module docstring)."""

    name = "clip"
    metric = "clip_score"
    metrics = ("clip_score",)
    default_metric = "clip_score"
    DEFAULT_MODEL = CLIPSCORE_MODEL
    EXTRA_OPTIONS = ("weight", "prefix")

    def _configure(self, options: dict[str, Any]) -> None:
        self.weight = finite_float(options.get("weight", CLIPSCORE_WEIGHT), "weight")
        if self.weight <= 0:
            raise VerifierConfigError(f"verifier_args.options.weight: received {self.weight!r}, allowed: a positive number")
        prefix = options.get("prefix", "")
        if not isinstance(prefix, str):
            raise VerifierConfigError(f"verifier_args.options.prefix: received {prefix!r}, allowed: a text")
        self.prefix = prefix.strip()

    def _encode_text(self, state: dict[str, Any], prompt: str):
        return self._text_embedding(state, f"{self.prefix} {prompt}" if self.prefix else prompt)

    def _score_batch(self, state, text, images):
        results = []
        for cosine in self._cosines(state, text, images):
            value = self.weight * max(cosine, 0.0)
            results.append((value, f"CLIPScore {value:.2f} = {self.weight:g} * max(cos, 0), cosine {cosine:.4f} "
                                   f"between the image and prompt embeddings of {self.model_name}"))
        return results


class PickScoreVerifier(_ClipSimilarity):
    """PickScore: logit_scale.exp() * cos (see the module docstring)."""

    name = "pickscore"
    metric = "pickscore"
    metrics = ("pickscore",)
    default_metric = "pickscore"
    DEFAULT_MODEL = PICKSCORE_MODEL
    EXTRA_OPTIONS = ("processor",)

    def _configure(self, options: dict[str, Any]) -> None:
        processor = options.get("processor")
        if processor is not None and not (isinstance(processor, str) and processor.strip()):
            raise VerifierConfigError(
                f"verifier_args.options.processor: received {processor!r}, allowed: a hub id or a local folder"
            )
        if processor is None:
            processor = PICKSCORE_PROCESSOR if self.model_name == PICKSCORE_MODEL else self.model_name
        self.processor_name = check_source(processor.strip(), "options.processor")

    def _processor_source(self) -> str:
        return self.processor_name

    def _encode_text(self, state: dict[str, Any], prompt: str):
        return self._text_embedding(state, prompt)

    def _score_batch(self, state, text, images):
        scale = float(state["model"].logit_scale.exp().float())
        return [(scale * cosine, f"PickScore {scale * cosine:.2f} = logit_scale.exp() {scale:.2f} * cosine "
                                 f"{cosine:.4f} between the image and prompt embeddings of {self.model_name}")
                for cosine in self._cosines(state, text, images)]
