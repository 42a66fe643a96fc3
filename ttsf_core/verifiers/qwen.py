"""Qwen2.5-VL as a local verifier: one chat per image, greedy decoding, the one grading schema.

The model and its processor load on the first `score` call (construction only checks the
configuration), once per verifier instance, and are reused for every later call. Images are graded
in batches of `options["batch_size"]` (default 4) with left padding; only the newly generated tokens
are decoded, and each answer goes through `parse_grades`, so a malformed answer raises VerifierError
naming the image's index in the input list, never a None.

Options (`VerifierArgs.options`), all optional:
  batch_size    images per generate() call (default 4)
  torch_dtype   "bf16" | "fp16" | "fp32" (default: bf16 on cuda, fp32 on cpu)
  processor     "auto" (default: AutoProcessor, falling back to the image-only processor when the
                stock one cannot load, e.g. without torchvision), "image_only", or "module:Class"
  attn_implementation  passed to from_pretrained (e.g. "sdpa", "flash_attention_2")
  min_pixels, max_pixels  resize bounds for each image (the processor's own by default)
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers._local import positive_int, resolve_device
from ttsf_core.verifiers.base import (SCORE_MAX, Grades, VerifierConfigError, VerifierError, checked_images,
                                     parse_grades)
from ttsf_core.verifiers.rubric import grading_text, load_rubric

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_BATCH_SIZE = 4
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}
_PROCESSOR_CHOICES = ("auto", "image_only", "a 'module:Class' path")
KNOWN_OPTIONS = ("batch_size", "torch_dtype", "processor", "attn_implementation", "min_pixels", "max_pixels")

# The grading instructions are the one rubric every VLM grader sends (rubric.md, or
# verifier_args.prompt_path): see ttsf_core/verifiers/rubric.py.
def grading_instructions(prompt: str, rubric: str | None = None) -> str:
    """The full instruction text sent with each image: the rubric (aspects, scale, JSON shape), then
    the prompt as data. `rubric` None: the packaged rubric."""
    return grading_text(load_rubric(None) if rubric is None else rubric, prompt)


def grading_messages(prompt: str, rubric: str | None = None) -> list[dict[str, Any]]:
    """One user turn: the image, then the grading instructions."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": grading_instructions(prompt, rubric)}],
        }
    ]


# ---------------------------------------------------------------------------------------------
# An image-only processor: the stock Qwen2_5_VLProcessor also builds a video processor, which
# needs torchvision. Grading only ever sends images, so image_processor + tokenizer suffice.
# ---------------------------------------------------------------------------------------------
def _image_only_processor_class() -> type:
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor without the video processor (attributes: image_processor, tokenizer)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # ProcessorMixin pairs positional sub-processors with get_attributes() (here the two of
            # this signature), so the trailing video_processor=None is dropped.
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnlyQwenProcessor.__qualname__ = "ImageOnlyQwenProcessor"  # importable as qwen.ImageOnlyQwenProcessor
    return ImageOnlyQwenProcessor


_IMAGE_ONLY_CLASS: type | None = None


def image_only_processor_class() -> type:
    """The image-only Qwen2.5-VL processor class (built on first use: importing transformers is slow)."""
    global _IMAGE_ONLY_CLASS
    if _IMAGE_ONLY_CLASS is None:
        _IMAGE_ONLY_CLASS = _image_only_processor_class()
    return _IMAGE_ONLY_CLASS


def __getattr__(name: str) -> Any:
    # `from ttsf_core.verifiers.qwen import ImageOnlyQwenProcessor` (or "ttsf_core.verifiers.qwen:
    # ImageOnlyQwenProcessor" in options.processor) without importing transformers at module import.
    if name == "ImageOnlyQwenProcessor":
        return image_only_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _import_path(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise VerifierConfigError(f"options.processor: cannot import {path!r}: {error}") from None


class QwenVerifier:
    """Grades images with a local Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct unless model_name says otherwise).

    `processor` (keyword, optional) replaces the processor: an instance used as is, or a class whose
    `from_pretrained(model_name)` is called at load time. `logits_processor` (keyword, optional) is
    passed to every `generate()` call (a hook for tests and constrained decoding).
    """

    name = "qwen"
    reads_rubric = True  # its grades follow the rubric: the rubric is part of its grading identity
    score_max = SCORE_MAX  # the rubric's scale has a top (adaptive allocation expects no gain above it)
    DEFAULT_MODEL = DEFAULT_MODEL

    def __init__(self, args: VerifierArgs, *, processor: Any = None, logits_processor: Any = None):
        self.args = args
        options = dict(args.options)
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            raise VerifierConfigError(
                f"verifier_args.options: received unknown {', '.join(map(repr, unknown))}, allowed: {', '.join(KNOWN_OPTIONS)}"
            )
        self.model_name = (args.model_name or DEFAULT_MODEL).strip()
        if self.model_name.startswith(("/", "./", "../", "~")) and not Path(self.model_name).expanduser().is_dir():
            raise VerifierConfigError(
                f"verifier_args.model_name: received {self.model_name!r}, allowed: a hub id or an existing local folder"
            )
        self.batch_size = positive_int(options.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size")
        self.device = resolve_device(args.device)
        self.dtype_name = _resolve_dtype(options.get("torch_dtype"), self.device)
        self.attn_implementation = options.get("attn_implementation")
        self.image_kwargs: dict[str, int] = {}
        for key in ("min_pixels", "max_pixels"):
            if key in options:
                self.image_kwargs[key] = positive_int(options[key], key)
        self._processor_spec = processor if processor is not None else options.get("processor", "auto")
        if isinstance(self._processor_spec, str) and self._processor_spec not in ("auto", "image_only"):
            if ":" not in self._processor_spec:
                raise VerifierConfigError(
                    f"verifier_args.options.processor: received {self._processor_spec!r}, allowed: {', '.join(_PROCESSOR_CHOICES)}"
                )
        self.logits_processor = logits_processor
        # The one rubric (rubric.md, or verifier_args.prompt_path). verifier_args.seed is not used:
        # decoding is greedy, so there is nothing to seed.
        self.rubric = load_rubric(args.prompt_path)
        self.model: Any = None
        self.processor: Any = None
        self._lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load model and processor now (otherwise the first `score` does). Safe to call twice."""
        with self._lock:
            if self.model is None:
                self._load()

    def _load(self) -> None:
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        processor = self._load_processor()
        kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype_name)}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.model_name, **kwargs)
        except (OSError, ValueError) as error:
            raise VerifierConfigError(f"qwen: cannot load model {self.model_name!r}: {error}") from None
        model.to(self.device).eval()
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.processor, self.model = processor, model

    def _load_processor(self) -> Any:
        spec = self._processor_spec
        if isinstance(spec, str) and ":" in spec:
            spec = _import_path(spec)
        if spec == "image_only":
            spec = image_only_processor_class()
        if spec == "auto":
            from transformers import AutoProcessor

            try:
                return AutoProcessor.from_pretrained(self.model_name)
            except (ImportError, OSError, ValueError) as error:
                logger.warning(
                    "qwen: the stock processor for %r did not load (%s); using the image-only processor",
                    self.model_name, str(error).splitlines()[0] if str(error) else type(error).__name__,
                )
                spec = image_only_processor_class()
        if isinstance(spec, type):
            try:
                return spec.from_pretrained(self.model_name)
            except (ImportError, OSError, ValueError) as error:
                raise VerifierConfigError(f"qwen: cannot load the processor for {self.model_name!r}: {error}") from None
        if not hasattr(spec, "tokenizer") or not callable(spec):
            raise VerifierConfigError(
                f"qwen: processor: received {type(spec).__name__}, allowed: a processor instance or class, "
                f"{', '.join(_PROCESSOR_CHOICES)}"
            )
        return spec

    # -- grading -----------------------------------------------------------------------------
    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]:
        """One Grades per image, in input order; VerifierError (naming the image) on a bad answer."""
        results = self.score_partial(prompt, images)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def score_partial(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades | VerifierError]:
        """One Grades or VerifierError per image, in input order: a bad answer costs only its image
        (the others' answers, already generated, are kept)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: received {prompt!r}, allowed: a non-empty text")
        images = checked_images(images)
        if not images:
            return []
        with self._lock:  # one model: batches from concurrent callers run one after another
            if self.model is None:
                self._load()
            results: list[Grades | VerifierError] = []
            for start in range(0, len(images), self.batch_size):
                answers = self._generate(prompt, images[start : start + self.batch_size])
                for offset, (text, stopped) in enumerate(answers):
                    try:
                        results.append(self._parse(text, start + offset, stopped))
                    except VerifierError as error:
                        results.append(error)
        return results

    def _parse(self, text: str, image_index: int, stopped: bool) -> Grades:
        try:
            return parse_grades(text, image_index)
        except VerifierError as error:
            if stopped:
                raise
            raise VerifierError(
                f"{error} (the answer was cut at max_new_tokens={self.args.max_new_tokens} before it ended)",
                image_index,
            ) from None

    def _generate(self, prompt: str, images: list[Image.Image]) -> list[tuple[str, bool]]:
        """Generate one answer per image; returns (new text, whether it ended with an end token)."""
        import torch

        processor, model = self.processor, self.model
        chat = processor.apply_chat_template(grading_messages(prompt, self.rubric), tokenize=False, add_generation_prompt=True)
        call_kwargs: dict[str, Any] = {}
        if self.image_kwargs:
            size = dict(getattr(processor.image_processor, "size", None) or {})
            if "min_pixels" in self.image_kwargs:
                size["shortest_edge"] = self.image_kwargs["min_pixels"]
            if "max_pixels" in self.image_kwargs:
                size["longest_edge"] = self.image_kwargs["max_pixels"]
            call_kwargs["size"] = size
        inputs = processor(
            text=[chat] * len(images),
            images=[image.convert("RGB") for image in images],
            padding=True,
            return_tensors="pt",
            **call_kwargs,
        ).to(self.device)
        tokenizer = processor.tokenizer
        generate_kwargs: dict[str, Any] = {
            "max_new_tokens": self.args.max_new_tokens,
            "do_sample": False,
            # Greedy: the checkpoint's sampling defaults (temperature, top_p, top_k) do not apply.
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.logits_processor is not None:
            generate_kwargs["logits_processor"] = self.logits_processor
        with torch.inference_mode():
            output = model.generate(**inputs, **generate_kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        stop_ids = _stop_token_ids(model, tokenizer)
        stopped = [bool(stop_ids & set(row.tolist())) for row in new_tokens]
        return list(zip(texts, stopped))


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _resolve_dtype(value: Any, device: str) -> str:
    if value is None:
        return "bfloat16" if device.startswith("cuda") else "float32"
    text = str(value).strip().lower().removeprefix("torch.")
    if text not in _DTYPES:
        raise VerifierConfigError(
            f"verifier_args.options.torch_dtype: received {value!r}, allowed: bf16, fp16, fp32 (or bfloat16, float16, float32)"
        )
    return _DTYPES[text]
