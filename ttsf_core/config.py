"""The run configuration: frozen pydantic models, validated at construction, the one source of defaults.

The nested layout mirrors tt-scale-flux's configs/*.json (`pretrained_model_name_or_path`,
`torch_dtype`, `pipeline_call_args`, `verifier_args`, `search_args`) so those files load as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ttsf_core.config_base import ConfigError, _device, _Frozen, digest, merge
from ttsf_core.config_errors import format_validation_error, shown
from ttsf_core.config_prompts import (
    DEFAULT_DATASET,
    MAX_PROMPT_CHARS,
    PROMPT_ALLOWED,
    PromptSource,
    prompt_problem,
)
from ttsf_core.model_defaults import DEFAULT_MODEL, MODEL_DEFAULTS

# The config's parts live in config_base (models, ConfigError, digest, merge) and config_prompts (where
# prompts come from); importing them from here keeps one place to find a config's names.
__all__ = ["DEFAULT_DATASET", "DEFAULT_MODEL", "MAX_PROMPT_CHARS", "PROMPT_ALLOWED", "BudgetArgs", "CommonSearchArgs",
           "ConfigError", "DispatchArgs", "ExportArgs", "PipelineCallArgs", "PriceOverride", "PromptSource",
           "RunConfig", "SearchArgs", "VerifierArgs", "build_config", "digest", "merge", "prompt_problem"]

TORCH_DTYPES = ("bf16", "fp16", "fp32")
# Verifier options that only say how the API is reached; they never change a grade.
TRANSPORT_OPTIONS = ("base_url", "api_version")
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


# Call arguments ttsf itself passes (the prompt's embeddings, the candidates' latents and generators,
# the output form): a config cannot set them.
RESERVED_CALL_ARGS = (
    "prompt", "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
    "prompt_attention_mask", "negative_prompt_attention_mask", "latents", "generator", "output_type",
    "return_dict", "num_images_per_prompt", "num_videos_per_prompt", "callback", "callback_steps",
    "callback_on_step_end", "callback_on_step_end_tensor_inputs",
)


class PipelineCallArgs(_Frozen):
    """Arguments of the diffusers pipeline call (tt-scale-flux's `pipeline_call_args`): the five named
    here, and any other keyword the pipeline's __call__ takes (negative_prompt, num_frames, ...),
    checked against that signature before the model loads. Unset (or null): the pipeline's own default,
    and not passed at all. num_inference_steps is never left unset in a resolved run: resolve fills in
    the pipeline class's default (the engine counts denoiser evaluations and drafts take a fraction)."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)

    height: int | None = Field(None, gt=0, le=8192)
    width: int | None = Field(None, gt=0, le=8192)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    max_sequence_length: int | None = Field(None, ge=1, le=512)

    @model_validator(mode="after")
    def _other_arguments_are_plain_values(self) -> "PipelineCallArgs":
        for name, value in (self.model_extra or {}).items():
            if name in RESERVED_CALL_ARGS:
                raise ValueError(f"{name}: received {shown(value)}, allowed: any argument of the pipeline's __call__ "
                                 f"except those ttsf passes itself ({', '.join(RESERVED_CALL_ARGS)})")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: received {shown(value)}, allowed: a JSON value (text, number, true/false, "
                                 "list or mapping of those)") from None
        return self

    def given(self) -> dict[str, Any]:
        """The arguments this config sets (passed to every call as they are), steps aside (per candidate)."""
        return {name: value for name, value in self.model_dump(exclude={"num_inference_steps"}).items()
                if value is not None}

    def __hash__(self) -> int:  # extra arguments may be lists or mappings
        return hash(json.dumps(self.model_dump(), sort_keys=True, default=str))


DEFAULT_GRADE_FRAMES = 4


class ExportArgs(_Frozen):
    """How video candidates are written and graded (tt-scale-flux's `export_args`)."""

    # Frames per second of the mp4; None: the pipeline's own (LTX-Video's frame_rate argument, 16 for Wan).
    fps: int | None = Field(None, ge=1, le=240)
    # Image verifiers grade this many evenly spaced frames of a video; its grade is their mean per metric.
    grade_frames: int = Field(DEFAULT_GRADE_FRAMES, ge=1, le=64)
    # "frames": every verifier grades a video by its grade_frames frames. "whole": the mp4 itself goes
    # to a verifier that reads video (gemini), which then sees motion and timing, not 4 stills.
    video_grading: Literal["frames", "whole"] = "frames"

    def grading_identity(self) -> dict[str, Any]:
        """How videos are graded, where it is not the default: image runs' identities never change."""
        if self.video_grading == "whole":
            return {"video_grading": "whole"}
        return {"grade_frames": self.grade_frames} if self.grade_frames != DEFAULT_GRADE_FRAMES else {}


class VerifierArgs(_Frozen):
    """Which verifier grades the images, and how (tt-scale-flux's `verifier_args`)."""

    # One verifier, or an ensemble of several, comma-separated ("clip,image_reward,laion_aesthetic").
    name: str = "gemini"
    # None: the verifier's own default model (gemini: gemini_models.DEFAULT_GEMINI_MODEL; qwen: Qwen2.5-VL-7B).
    model_name: str | None = None
    # None: the verifier's own default metric (overall_score for VLM graders, its one metric for a
    # scalar reward, "ensemble" for an ensemble); checked against the verifier's metrics up front.
    choice_of_metric: str | None = None
    # How an ensemble's members combine into its "ensemble" metric: the unweighted mean of their
    # ranks among the compared images (Ma et al.'s rule), or the mean of their min-max scaled scores.
    ensemble: Literal["rank", "mean_score"] = "rank"
    max_new_tokens: int = Field(800, ge=1, le=32768)
    max_concurrency: int = Field(8, ge=1, le=256)
    # The whole request, first byte to last: a server that drips its answer cannot hold a worker longer.
    request_timeout_s: float = Field(120.0, gt=0, le=3600)
    device: str | None = None
    # A grading rubric file for VLM graders (tt-scale-flux's `prompt_path`); None: ttsf's rubric.
    prompt_path: str | None = None
    # Sampling seed for graders whose API takes one (tt-scale-flux's `seed`; gemini, openai); qwen decodes
    # greedily and needs none.
    seed: int | None = Field(None, ge=0, lt=2**63)
    # Gemini: how much the model thinks before it grades (thinking_level on Gemini 3, a thinking budget
    # on 2.5). None: the lowest level the model takes (grading one picture needs no long reasoning).
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None
    # Gemini: the tokens an image costs (about 280/560/1120 on Gemini 3). None: the model's own.
    media_resolution: Literal["low", "medium", "high"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: Any) -> Any:
        return _device(value)

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        members = [part.strip() for part in value.split(",")]
        if not all(members):
            raise ValueError("allowed: a registered verifier name, or several separated by commas")
        return ",".join(members)


MAX_POOL = 4096  # noises in one round: beyond this a typo, not a search (16 rounds of 2 would be 65536)
_SEARCH_METHOD_ALIASES = {"zero_order": "zero-order", "zeroorder": "zero-order", "zo": "zero-order"}


class CommonSearchArgs(_Frozen):
    """What every strategy takes: the rounds, and cheap drafts (over any strategy: every candidate first
    at draft_steps, the best draft_keep again at full steps)."""

    search_rounds: int = Field(4, ge=1, le=16)
    draft_steps: int | None = Field(None, ge=1)
    draft_keep: int = Field(2, ge=1, le=1024)

    def __hash__(self) -> int:  # a strategy's own arguments may be extras
        return hash(json.dumps(self.model_dump(), sort_keys=True, default=str))


class SearchArgs(CommonSearchArgs):
    """The search (tt-scale-flux's `search_args`). A strategy's own arguments (random's
    initial_pool_size, zero-order's threshold and num_neighbors, ...) are validated by the arguments
    model in the strategy's own file (ttsf_core.search), chosen by `search_method`, when the run is
    resolved (ttsf_core.resolve): this model keeps them as given."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)

    search_method: str = "random"

    @field_validator("search_method", mode="before")
    @classmethod
    def _method_alias(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("allowed: the name of a search strategy (`ttsf run --help` lists them)")
        text = value.strip().lower()
        return _SEARCH_METHOD_ALIASES.get(text, text)


class DispatchArgs(_Frozen):
    """Where batches run: in the dataset run's own process (local), or each as a flow run of a
    `search-batch` deployment on a work pool (pool), taken by whichever worker (GPU) frees up."""

    mode: Literal["local", "pool"] = "local"
    # The deployment batches are sent to, "<flow name>/<deployment name>" (pool mode).
    deployment: str = "search-batch/gpu"
    # How long one batch run may run, counted from when it starts running (not from its submission),
    # before the dataset run cancels it; it is then submitted again while attempts remain (pool mode).
    batch_timeout_s: float = Field(24 * 3600, gt=0)
    # Liveness without a server (pool mode; docs/scale-out.md): a batch writes a heartbeat file into the
    # shared run folder every `heartbeat_s`; one whose heartbeat has not changed for `lost_after_s` while
    # the server says it runs (or one taken by a worker that never started it) is lost: marked Crashed
    # and submitted again, to whichever worker is free, until it has had `max_attempts` attempts.
    heartbeat_s: float = Field(10.0, ge=1, le=300)
    lost_after_s: float = Field(180.0, ge=5, le=24 * 3600)
    max_attempts: int = Field(3, ge=1, le=20)
    # How long the dataset run and its batches ride out a Prefect server they cannot reach (back-off up
    # to 15 s between tries) before giving up; batches keep searching and writing meanwhile.
    server_outage_s: float = Field(3600.0, ge=60, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _beats_fit_in_the_loss_window(self) -> "DispatchArgs":
        # Three missed beats before a batch is called lost: one late write never loses a live batch.
        if self.lost_after_s < 3 * self.heartbeat_s:
            raise ValueError(f"lost_after_s: received {self.lost_after_s:g} with heartbeat_s {self.heartbeat_s:g}, "
                             f"allowed: at least 3 x heartbeat_s ({3 * self.heartbeat_s:g} s)")
        return self


class BudgetArgs(_Frozen):
    """What a run may spend across its dataset, and how its rounds go to prompts. `uniform`: rounds in
    order (every prompt's round 1, then round 2, ...), a prompt stopping before the first round that
    would go over; `adaptive` (ttsf_core.allocation): round 1 for every prompt, then each next round to
    the prompts expected to gain most per NFE, a prompt stopping at a plateau or the verifier's top. Finished rounds
    are recorded and the report written. None: no limit."""

    # Answers billed by an API grader (an answer asked again because it did not fit counts too).
    max_verifier_requests: int | None = Field(None, ge=1)
    # US dollars at the price table's prices (ttsf_core/prices.toml and `prices`).
    max_verifier_cost_usd: float | None = Field(None, gt=0)
    # Denoiser evaluations of the whole dataset (every prompt's rounds, recorded ones included).
    max_nfe: int | None = Field(None, ge=1)
    allocation: Literal["uniform", "adaptive"] = "uniform"
    # Adaptive: a prompt stops once its best rose by less than plateau_delta over its last plateau_rounds.
    plateau_rounds: int | None = Field(None, ge=1, le=16)
    plateau_delta: float = Field(0.0, ge=0)

    def limited(self) -> bool:
        """Whether rounds are planned before they run (a limit, or the adaptive allocation)."""
        return self.max_verifier_requests is not None or self.max_verifier_cost_usd is not None or \
            self.max_nfe is not None or self.allocation == "adaptive"


class PriceOverride(_Frozen):
    """A model's price per 1M tokens, over the shipped table (ttsf_core/prices.toml)."""

    input_per_1m_usd: float = Field(ge=0)
    output_per_1m_usd: float = Field(ge=0)  # answer and thought tokens
    batch_discount: float = Field(0.0, ge=0, lt=1)


class RunConfig(_Frozen):
    """Everything one run needs, as plain validated data: nothing is imported, read or asked of the
    network to validate it. ttsf_core.resolve completes it (the pipeline's default steps, the verifier's
    default metric, the strategy's own arguments) and says what decides images, grades and records."""

    pretrained_model_name_or_path: str = DEFAULT_MODEL
    torch_dtype: str = "bf16"
    device: str = "auto"
    use_low_gpu_vram: bool = False
    # Speed. Regional compilation (the denoiser's repeated blocks) and the attention backend (diffusers'
    # dispatcher: native, flash, _native_cudnn, ...) leave the pixels as they are, to within bf16 noise;
    # fp8 weights and activations (torchao, on cards with fp8) and VAE tiling change them, so those two
    # are part of the images' identity.
    compile: bool = False
    attention_backend: str | None = None
    quantize: Literal["none", "fp8"] = "none"
    vae_tiling: bool = False
    batch_size_for_img_gen: int = Field(4, ge=1, le=256)
    seed: int = Field(0, ge=0, lt=2**63)
    pipeline_call_args: PipelineCallArgs = Field(default_factory=PipelineCallArgs)
    verifier_args: VerifierArgs = Field(default_factory=VerifierArgs)
    search_args: SearchArgs = Field(default_factory=SearchArgs)
    export_args: ExportArgs = Field(default_factory=ExportArgs)
    prompts: PromptSource = Field(default_factory=PromptSource)
    output_dir: Path = Path("output")
    # Orchestration (Prefect): none of these change an image or a grade.
    prompts_per_batch: int = Field(8, ge=1)
    verifier_rpm: int | None = Field(None, ge=1)
    verifier_retries: int = Field(6, ge=0, le=50)
    # Answers that do not fit the grading schema: asked again this often, then the image is recorded
    # as ungradeable (excluded from selection) so that its round, the run and the report still finish.
    verifier_invalid_retries: int = Field(3, ge=0, le=20)
    # First retry delay; doubles each retry, with jitter, and never shorter than a 429's Retry-After.
    verifier_retry_backoff_s: float = Field(2.0, ge=0, le=600)
    task_workers: int = Field(16, ge=1, le=256)
    dispatch: DispatchArgs = Field(default_factory=DispatchArgs)
    # What this invocation may spend on the verifier, and the prices it is counted at (neither changes
    # an image or a grade).
    budget: BudgetArgs = Field(default_factory=BudgetArgs)
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    # Where OUTPUT_DIR is served over HTTP (e.g. by `ttsf serve`), so the Prefect UI can link full-size
    # images; without it the UI shows thumbnails only. Decides nothing about images or grades.
    output_url: str | None = None
    # None: a local folder beside the run (output_dir/.prefect-results); else a Prefect storage block
    # slug such as "s3-bucket/ttsf-results", or a local path.
    result_storage: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        """The default model's (and the tiny models') own defaults under what is given. What is left
        unset is decided when the run is resolved (ttsf_core.resolve): the steps are the pipeline class's
        own default, the metric the verifier's."""
        if not isinstance(data, dict):
            return data
        model = data.get("pretrained_model_name_or_path", DEFAULT_MODEL)
        model = model.strip() if isinstance(model, str) else model
        call = data.get("pipeline_call_args")
        if isinstance(call, PipelineCallArgs):
            call = call.model_dump()
        if isinstance(call, dict):  # null is unset, as absent is (a UI form sends nulls)
            data = {**data, "pipeline_call_args": {name: value for name, value in call.items() if value is not None}}
        if isinstance(model, str) and model in MODEL_DEFAULTS:
            data = merge(MODEL_DEFAULTS[model], data)
        return data

    @field_validator("torch_dtype", mode="before")
    @classmethod
    def _dtype(cls, value: Any) -> str:
        text = str(value).strip().lower().removeprefix("torch.")
        text = _DTYPE_ALIASES.get(text, text)
        if text not in TORCH_DTYPES:
            raise ValueError(f"allowed: one of {', '.join(TORCH_DTYPES)} (or bfloat16, float16, float32)")
        return text

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: Any) -> Any:
        return _device(value)

    @field_validator("output_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("allowed: an http:// or https:// URL")
        return value

    @field_validator("pretrained_model_name_or_path")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("allowed: a hub id, a local folder or 'tiny-flux'")
        return value.strip()


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, raising ConfigError with readable lines."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, RunConfig)) from None
