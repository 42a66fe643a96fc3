"""The run configuration: frozen pydantic models, validated at construction, the one source of defaults.

The nested layout mirrors tt-scale-flux's configs/*.json (`pretrained_model_name_or_path`,
`torch_dtype`, `pipeline_call_args`, `verifier_args`, `search_args`) so those files load as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo


DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
DEFAULT_DATASET = "data-is-better-together/open-image-preferences-v1-binarized"
TORCH_DTYPES = ("bf16", "fp16", "fp32")
TINY_FLUX = "tiny-flux"
# The default model keeps tt-scale-flux's FLUX config (configs/flux.1_dev.json), not FluxPipeline's own
# defaults (28 steps): FLUX runs keep the identities (and folders) they always had.
FLUX_DEV_CALL_ARGS: dict[str, Any] = {
    "height": 1024, "width": 1024, "guidance_scale": 3.5, "num_inference_steps": 50, "max_sequence_length": 512,
}
# The offline tiny FLUX is for CPU runs in seconds: its own defaults, under anything given explicitly.
TINY_FLUX_DEFAULTS: dict[str, Any] = {
    "torch_dtype": "fp32",
    # 64 text tokens, not 512: in the tiny transformer the text, not the image, dominates the cost.
    "pipeline_call_args": {"height": 128, "width": 128, "num_inference_steps": 4, "max_sequence_length": 64},
}
# Offline tiny versions of the newer flow-matching families (ttsf_core/pipelines/families/): CPU
# defaults in seconds, with the guidance their real models' cards recommend (so CFG paths run too).
TINY_FLUX2, TINY_FLUX2_KLEIN, TINY_QWEN_IMAGE, TINY_SD3, TINY_Z_IMAGE = (
    "tiny-flux2", "tiny-flux2-klein", "tiny-qwen-image", "tiny-sd3", "tiny-z-image")
_TINY_SIZE = {"height": 128, "width": 128, "num_inference_steps": 4}
TINY_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # 256 text tokens: the chat template's system message alone is ~200 of the tiny byte-level tokens.
    TINY_FLUX2: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 4.0,
                                                               "max_sequence_length": 256}},
    TINY_FLUX2_KLEIN: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 1.0,
                                                                     "max_sequence_length": 64}},
    TINY_QWEN_IMAGE: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "true_cfg_scale": 4.0,
                                                                    "negative_prompt": " "}},
    TINY_SD3: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 4.5,
                                                             "max_sequence_length": 64}},
    TINY_Z_IMAGE: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 0.0,
                                                                 "max_sequence_length": 64}},
}
# Call arguments a config leaves unset are the pipeline's own defaults, except for these models.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    DEFAULT_MODEL: {"pipeline_call_args": FLUX_DEV_CALL_ARGS},
    TINY_FLUX: {**TINY_FLUX_DEFAULTS,
                "pipeline_call_args": {**FLUX_DEV_CALL_ARGS, **TINY_FLUX_DEFAULTS["pipeline_call_args"]}},
    **TINY_MODEL_DEFAULTS,
}
# Verifier options that only say how the API is reached; they never change a grade.
TRANSPORT_OPTIONS = ("base_url", "api_version")
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info) -> Any:
        # pydantic reads true as 1: YAML's `search_rounds: true` would run one round.
        if isinstance(value, bool) and bool not in _leaf_types(cls.model_fields[info.field_name].annotation):
            raise ValueError("allowed: " + _kind(cls.model_fields[info.field_name].annotation))
        return value


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICES_ALLOWED = "auto, cpu, cuda, cuda:N or mps"


def _leaf_types(annotation: Any) -> set:
    args = get_args(annotation)
    return set().union(*(_leaf_types(arg) for arg in args)) if args else {annotation}


def _device(value: Any) -> Any:
    if isinstance(value, str) and not DEVICE_PATTERN.match(value.strip().lower()):
        raise ValueError(f"allowed: {DEVICES_ALLOWED}")
    return value.strip().lower() if isinstance(value, str) else value


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
    and not passed at all. num_inference_steps is never left unset: RunConfig fills in the pipeline
    class's default (the engine counts denoiser evaluations and drafts take a fraction of it)."""

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

    def grading_identity(self) -> dict[str, Any]:
        """What decides a grade: not concurrency, timeouts or where the API is reached; the rubric by
        its text (an edited rubric file grades anew)."""
        options = {k: v for k, v in self.options.items() if k not in TRANSPORT_OPTIONS}
        identity = {"name": self.name, "model_name": self.model_name, "max_new_tokens": self.max_new_tokens,
                    "options": options}
        if self._reads_rubric():
            identity["rubric_sha256"] = hashlib.sha256(self._rubric_bytes()).hexdigest()
        if self.seed is not None:
            identity["seed"] = self.seed
        return identity | self._sent_settings()

    def _sent_settings(self) -> dict[str, Any]:
        """What the verifier resolves from these args and sends beyond them (a default model, the
        thinking and media settings it sends): they change grades, so they are part of the identity."""
        from ttsf_core.verifiers.registry import grading_settings_for  # the registry imports this module

        return grading_settings_for(self)

    def _reads_rubric(self) -> bool:
        """A grader that reads the rubric (gemini, qwen, openai, or an ensemble holding one): its grades
        change when the rubric does, so the rubric's text is part of their identity."""
        from ttsf_core.verifiers.registry import reads_rubric  # the registry imports this module

        return self.prompt_path is not None or reads_rubric(self.name)

    def _rubric_bytes(self) -> bytes:
        if self.prompt_path is not None:
            return Path(self.prompt_path).read_bytes()
        from ttsf_core.verifiers.rubric import load_rubric

        return load_rubric().encode("utf-8")

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        members = [part.strip() for part in value.split(",")]
        if not all(members):
            raise ValueError("allowed: a registered verifier name, or several separated by commas")
        return ",".join(members)

    @field_validator("prompt_path")
    @classmethod
    def _readable_rubric(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError("allowed: an existing text file holding a grading rubric")
        return value


SEARCH_METHODS = ("random", "zero-order")
MAX_POOL = 4096  # noises in one round: beyond this a typo, not a search (16 rounds of 2 would be 65536)
_SEARCH_METHOD_ALIASES = {"zero_order": "zero-order", "zeroorder": "zero-order", "zo": "zero-order"}


class SearchArgs(_Frozen):
    """The search over initial noises (tt-scale-flux's `search_args`, zero-order keys included)."""

    search_method: Literal["random", "zero-order"] = "random"
    search_rounds: int = Field(4, ge=1, le=16)
    # random: round r (1-based) draws initial_pool_size * 2**(r-1) noises: 2, 4, 8, ... by default.
    initial_pool_size: int = Field(2, ge=1, le=1024)
    # zero-order: each round grades a pivot and num_neighbors neighbours at cosine `threshold` to it.
    threshold: float = Field(0.95, gt=0, lt=1)
    num_neighbors: int = Field(4, ge=1, le=256)
    # Cheap drafts: every candidate first at draft_steps, the best draft_keep again at full steps.
    draft_steps: int | None = Field(None, ge=1)
    draft_keep: int = Field(2, ge=1, le=1024)

    @field_validator("search_method", mode="before")
    @classmethod
    def _method_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            return _SEARCH_METHOD_ALIASES.get(text, text)
        return value

    def identity(self) -> dict[str, Any]:
        """What decides the records of a run beyond its images and grades: the strategy and its own
        parameters. Not `search_rounds`: a longer run extends a shorter one in the same folder."""
        own = {"random": ("initial_pool_size",), "zero-order": ("threshold", "num_neighbors")}[self.search_method]
        identity = {"search_method": self.search_method, **{name: getattr(self, name) for name in own}}
        if self.draft_steps is not None:
            identity |= {"draft_steps": self.draft_steps, "draft_keep": self.draft_keep}
        return identity

    @model_validator(mode="after")
    def _pools_are_bounded(self) -> "SearchArgs":
        largest = self.pool_size(self.search_rounds)
        if largest > MAX_POOL:
            raise ValueError(f"search_rounds: received {self.search_rounds} (round {self.search_rounds} would draw "
                             f"{largest} noises), allowed: rounds whose largest pool is at most {MAX_POOL} noises "
                             f"(initial_pool_size * 2**(search_rounds - 1))")
        return self

    def pool_size(self, search_round: int) -> int:
        """Noises a round draws (its final-stage candidates before any draft cut)."""
        if self.search_method == "zero-order":
            return 1 + self.num_neighbors
        return self.initial_pool_size * 2 ** (search_round - 1)


MAX_PROMPT_CHARS = 20_000  # a T5 encoder reads 512 tokens (~2-3k characters); beyond this is not a prompt
# Control characters a prompt cannot carry (NUL, escape codes): tab, line feed and carriage return can.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
PROMPT_ALLOWED = "a non-empty text without control characters (tabs and line breaks are kept as they are)"


def prompt_problem(text: str) -> str | None:
    """Why `text` cannot be searched as it is (None: it can). A prompt is never changed: it is searched
    exactly as given, or refused."""
    if not text.strip():
        return "it is blank"
    control = _CONTROL.search(text)
    if control is not None:
        return f"it holds the control character {control.group()!r} at character {control.start()}"
    if len(text) > MAX_PROMPT_CHARS:
        return f"it has {len(text)} characters, over {MAX_PROMPT_CHARS}"
    return None


class PromptSource(_Frozen):
    """Where prompts come from: one `prompt`, or the first `num_prompts` of a dataset."""

    prompt: str | None = None
    dataset: str = DEFAULT_DATASET
    dataset_split: str = "train"
    prompt_column: str = "prompt"
    num_prompts: int | Literal["all"] | None = 2

    @model_validator(mode="before")
    @classmethod
    def _one_prompt_has_no_count(cls, data: Any) -> Any:
        # One prompt is not a dataset: its count is None unless given (and then refused below).
        if isinstance(data, dict) and data.get("prompt") is not None and "num_prompts" not in data:
            return {**data, "num_prompts": None}
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_searchable(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"allowed: a text of at most {MAX_PROMPT_CHARS} characters")
        if prompt_problem(value) is not None:
            raise ValueError(f"allowed: {PROMPT_ALLOWED}")
        return value

    @field_validator("num_prompts", mode="before")
    @classmethod
    def _num_prompts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("none", "null", ""):
                return None
            if text == "all":
                return "all"
            if text.isdigit():
                value = int(text)
            else:
                raise ValueError("allowed: a positive integer or 'all'")
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError("allowed: a positive integer or 'all'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "PromptSource":
        if self.prompt is not None and self.num_prompts is not None:
            raise ValueError(f"num_prompts: received {self.num_prompts!r} together with a prompt, allowed: no count "
                             "with --prompt (or None); a count selects dataset prompts")
        if self.prompt is None and self.num_prompts is None:
            raise ValueError("num_prompts: received None, allowed: a positive integer or 'all' (None only together "
                             "with --prompt)")
        return self


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
    """What one invocation may spend on the verifier. Rounds are taken in order (every prompt's round 1,
    then round 2, ...); a prompt stops before the first round that would go over, finished rounds are
    recorded and the report written. None: no limit."""

    # Answers billed by an API grader (an answer asked again because it did not fit counts too).
    max_verifier_requests: int | None = Field(None, ge=1)
    # US dollars at the price table's prices (ttsf_core/prices.toml and `prices`).
    max_verifier_cost_usd: float | None = Field(None, gt=0)

    def limited(self) -> bool:
        return self.max_verifier_requests is not None or self.max_verifier_cost_usd is not None


class PriceOverride(_Frozen):
    """A model's price per 1M tokens, over the shipped table (ttsf_core/prices.toml)."""

    input_per_1m_usd: float = Field(ge=0)
    output_per_1m_usd: float = Field(ge=0)  # answer and thought tokens
    batch_discount: float = Field(0.0, ge=0, lt=1)


class RunConfig(_Frozen):
    """Everything one run needs. Only `search_identity()` fields decide what the images are."""

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
        """The default model's (and tiny-flux's) own defaults under what is given; then an unset
        num_inference_steps is the pipeline class's __call__ default (model_index.json's class, read
        without loading any weights)."""
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
        call = data.get("pipeline_call_args") or {}
        if isinstance(model, str) and model and isinstance(call, dict) and call.get("num_inference_steps") is None:
            from ttsf_core.pipelines.signature import default_steps  # pipelines import this module

            data = {**data, "pipeline_call_args": {**call, "num_inference_steps": default_steps(model)}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _verifiers_own_metric(cls, data: Any) -> Any:
        """An unset choice_of_metric is the chosen verifier's own default (decided here, so the run's
        identity and folder name the metric that really selects)."""
        if not isinstance(data, dict):
            return data
        verifier = data.get("verifier_args") or {}
        if isinstance(verifier, dict) and verifier.get("choice_of_metric") is None:
            from ttsf_core.verifiers.registry import default_metric_for  # the registry imports this module

            name = verifier.get("name", VerifierArgs.model_fields["name"].default)
            metric = default_metric_for(name) if isinstance(name, str) else None
            if metric is not None:
                data = {**data, "verifier_args": {**verifier, "choice_of_metric": metric}}
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

    @model_validator(mode="after")
    def _drafts_are_cheaper(self) -> "RunConfig":
        draft, full = self.search_args.draft_steps, self.pipeline_call_args.num_inference_steps
        if draft is not None and draft >= full:
            raise ValueError(f"search_args.draft_steps: received {draft}, allowed: an integer >= 1 and < "
                             f"pipeline_call_args.num_inference_steps ({full})")
        return self

    def generation_identity(self) -> dict[str, Any]:
        """What decides an image's pixels besides its noise and its steps (both part of its file name):
        the model, the dtype and every call argument the config sets (unset ones are the model's own);
        for videos a frame rate other than the pipeline's (it changes the mp4's bytes)."""
        identity = {"model": self.pretrained_model_name_or_path, "torch_dtype": self.torch_dtype,
                    **self.pipeline_call_args.given()}
        if self.export_args.fps is not None:
            identity["fps"] = self.export_args.fps
        if self.quantize != "none":
            identity["quantize"] = self.quantize
        if self.vae_tiling:
            identity["vae_tiling"] = True
        return identity

    def search_identity(self) -> dict[str, Any]:
        """What decides a run folder's records: images, grades and selection (not the round count)."""
        verifier = self.verifier_args
        return {
            "generation": self.generation_identity(),
            "num_inference_steps": self.pipeline_call_args.num_inference_steps,
            "seed": self.seed,
            "search": self.search_args.identity(),
            "verifier": verifier.grading_identity(),
            "choice_of_metric": verifier.choice_of_metric,
            # Another way of grading videos grades (and so selects) differently.
            **self.export_args.grading_identity(),
        }

    def identity_hash(self) -> str:
        return digest(self.search_identity())


def digest(payload: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-able payload (sorted keys): names folders and cache entries."""
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class ConfigError(ValueError):
    """A bad input, with one line per problem naming the field, what was received and what is allowed."""


def format_validation_error(error: ValidationError) -> str:
    """One `dotted.field: received X, allowed: Y` line per bad field; Y in plain words, built from
    the field's type and constraints, never pydantic's own wording."""
    lines: dict[str, str] = {}
    for item in error.errors():
        field, line = _problem(item)
        lines.setdefault(field, line)  # a union field fails once per member: one line for it
    return "\n".join(lines.values())


def _problem(item: dict[str, Any]) -> tuple[str, str]:
    field, info, model = _locate(item["loc"])
    if item["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        hint = did_you_mean(str(item["loc"][-1]), field.rpartition(".")[0])
        return field, f"{field}: received unknown field {item['loc'][-1]!r}{hint}, allowed: {allowed}"
    own = str(item.get("ctx", {}).get("error", "")) if item["type"] == "value_error" else ""
    sub, _, rest = own.partition(": ")
    if rest.startswith("received "):  # a model validator naming its own field: "sub.field: received ..."
        field = ".".join(filter(None, (field, sub)))
        return field, f"{field}: {rest}"
    allowed = own.removeprefix("allowed: ") or _allowed(info, item.get("ctx"))
    return field, f"{field or 'config'}: received {shown(item['input'])}, allowed: {allowed}"


def did_you_mean(name: str, where: str) -> str:
    """" (did you mean search_args.search_rounds?)" for a field given at the wrong level or misspelled,
    from every field of RunConfig (the closest by spelling, the same level first); "" when none is close."""
    import difflib

    paths = _field_paths(RunConfig)
    here = {path.rpartition(".")[2]: path for path in paths if path.rpartition(".")[0] == where}
    anywhere = {path.rpartition(".")[2]: path for path in reversed(paths)}
    found = ([path for path in paths if path.rpartition(".")[2] == name]  # the right name at another level
             or [here[leaf] for leaf in difflib.get_close_matches(name, here, n=1, cutoff=0.7)]
             or [path for leaf, path in here.items() if name and (leaf.startswith(name) or name.startswith(leaf))]
             or [anywhere[leaf] for leaf in difflib.get_close_matches(name, anywhere, n=1, cutoff=0.8)])
    return f" (did you mean {found[0]}?)" if found else ""


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        found.append(path)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += _field_paths(info.annotation, path + ".")
    return found


def shown(value: Any, limit: int = 80) -> str:
    """A received value as an error line shows it: its repr, cut short when long (a 1 MB prompt)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def _locate(loc: tuple) -> tuple[str, FieldInfo | None, type[BaseModel]]:
    """The dotted field `loc` names, its FieldInfo, and the model holding it (pydantic's union-member
    parts of a loc, like 'int' or "literal['all']", are dropped)."""
    model: type[BaseModel] = RunConfig
    names: list[str] = []
    info = None
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        names.append(str(part))
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info else None
        if get_origin(annotation) is dict and parts:  # {name: Model}: the key, then the model's fields
            names.append(str(parts.pop(0)))
            annotation = get_args(annotation)[1]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return ".".join(names), info, model


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a text", Path: "a path",
          dict: "a mapping of names to values"}


def _allowed(info: FieldInfo | None, ctx: dict[str, Any] | None) -> str:
    """E.g. "an integer >= 1 and <= 16": the field's type, then every bound it has."""
    limits = {key: value for key, value in (ctx or {}).items() if key in _BOUNDS}
    for constraint in info.metadata if info else ():
        limits |= {key: getattr(constraint, key) for key in _BOUNDS if hasattr(constraint, key)}
    bounds = " and ".join(f"{_BOUNDS[key]} {limits[key]}" for key in _BOUNDS if key in limits)
    return " ".join(filter(None, (_kind(info.annotation) if info else "a valid value", bounds)))


def _kind(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return f"one of {', '.join(map(str, args))}" if len(args) > 1 else repr(args[0])
    if origin in (Union, UnionType):
        return " or ".join(_kind(arg) for arg in args if arg is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping of {', '.join(annotation.model_fields)}"
    return _KINDS.get(origin or annotation, "a valid value")


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, raising ConfigError with readable lines."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON, TOML or YAML config file into a nested dict (tt-scale-flux's JSON keys included)."""
    path = Path(path)
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None or not path.is_file():
        raise ConfigError(f"config: received {str(path)!r}, allowed: an existing .json, .toml, .yaml or .yml file")
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:  # JSON, TOML and decoding errors are ValueErrors
        detail = " ".join(str(error).split())  # YAML's spans several lines
        raise ConfigError(f"config: received {str(path)!r} (it could not be parsed: {detail}), allowed: "
                          f"a valid {path.suffix.lower().lstrip('.').upper()} file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: received {str(path)!r} (it holds a {type(data).__name__}), allowed: "
                          "a mapping of field names to values")
    return _lift_tt_scale_flux_keys(data)


def _load_yaml(text: str) -> Any:
    return yaml.safe_load(text) or {}  # an empty file sets nothing


_PARSERS = {".json": json.loads, ".toml": tomllib.loads, ".yaml": _load_yaml, ".yml": _load_yaml}


def _lift_tt_scale_flux_keys(data: dict[str, Any]) -> dict[str, Any]:
    """tt-scale-flux puts prompt-source keys at the top level; ours nest them under `prompts`."""
    data = dict(data)
    prompt_keys = set(PromptSource.model_fields) & set(data)
    if prompt_keys:
        prompts = dict(data.get("prompts") or {})
        prompts.update({key: data.pop(key) for key in prompt_keys})
        data["prompts"] = prompts
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` (e.g. CLI flags) over `base` (e.g. a config file)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
