"""What the local scalar-reward verifiers share (clip, pickscore, laion_aesthetic, image_reward).

Each one scores one metric of its own with a model run on this machine. The plumbing is the same for
all of them and lives here:

- construction is cheap: the options, the model name and the device are checked, nothing is loaded;
- the model loads on the first `score` (or `load()`), once, under a lock, on `args.device` (None or
  "auto": cuda when available, else cpu), in fp16 on a GPU unless `options.torch_dtype` says bf16/fp32,
  always fp32 on the CPU;
- `args.model_name` (or `options.model_name`, which is how an ensemble member is given one) replaces
  the published default weights: a hub id or a local folder written by `save_pretrained`;
- `score(prompt, images)` encodes the prompt once per call, runs the images `batch_size` at a time
  (`options.batch_size`, default 16), and returns one Grades per image in input order, each holding the
  verifier's one metric with an explanation that states the raw numbers behind the score;
- errors are typed: an unknown option, a bad value, an unreadable model -> VerifierConfigError naming
  it; a prompt that is not text or an image that is not a PIL image -> ValueError naming its index;
  a non-finite score -> VerifierError naming the image (never a None).

Scores from a batch equal those of the same images one at a time up to float rounding: each verifier
declares how close (`score_tolerance`, absolute, on its own scale, for fp32).
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import AspectGrade, Grades, VerifierConfigError, VerifierError, checked_images

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
COMMON_OPTIONS = ("batch_size", "torch_dtype", "model_name")
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def check_options(options: dict[str, Any], known: Sequence[str]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise VerifierConfigError(
            f"verifier_args.options: received unknown {', '.join(map(repr, unknown))}, allowed: {', '.join(known)}"
        )
    return dict(options)


def positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VerifierConfigError(f"verifier_args.options.{key}: received {value!r}, allowed: a positive integer")
    return value


def finite_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VerifierConfigError(f"verifier_args.options.{key}: received {value!r}, allowed: a finite number")
    return float(value)


def resolve_device(device: str | None) -> str:
    """The device a local verifier loads on: "auto"/None as the pipeline's (ttsf_core.devices), any
    other checked against this machine (VerifierConfigError naming verifier_args.device)."""
    from ttsf_core.devices import device_problem, pick_device, visible_devices

    chosen = pick_device(device)
    if chosen not in ("cpu", "mps") and not (chosen == "cuda" or chosen.startswith("cuda:")):
        raise VerifierConfigError(f"verifier_args.device: received {device!r}, allowed: auto, cpu, cuda, cuda:N or mps")
    problem = device_problem(chosen)
    if problem is not None:
        raise VerifierConfigError(f"verifier_args.device: received {device!r} ({problem}), allowed: auto, "
                                  f"cpu{visible_devices()}")
    return chosen


def resolve_dtype(value: Any, device: str) -> str:
    """The torch dtype name: fp16 on a GPU by default; fp32 on the CPU whatever was asked (half
    precision there is slow and inexact)."""
    if value is None:
        chosen = "float16"
    else:
        text = str(value).strip().lower().removeprefix("torch.")
        if text not in _DTYPES:
            raise VerifierConfigError(
                f"verifier_args.options.torch_dtype: received {value!r}, allowed: fp16, bf16, fp32 "
                "(or float16, bfloat16, float32)"
            )
        chosen = _DTYPES[text]
    return chosen if device.startswith(("cuda", "mps")) else "float32"


def is_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def resolve_model_name(args: VerifierArgs, options: dict[str, Any], default: str) -> str:
    """args.model_name, else options["model_name"] (an ensemble member's way), else the default;
    a local path must be an existing folder."""
    from_args, from_options = args.model_name, options.get("model_name")
    if from_options is not None and not (isinstance(from_options, str) and from_options.strip()):
        raise VerifierConfigError(
            f"verifier_args.options.model_name: received {from_options!r}, allowed: a hub id or a local folder"
        )
    if from_args is not None and from_options is not None and from_args.strip() != from_options.strip():
        raise VerifierConfigError(
            f"verifier_args.options.model_name: received {from_options!r} beside model_name={from_args!r}, "
            "allowed: one of them (or the same)"
        )
    name = (from_args or from_options or "").strip() or default
    return check_source(name, "model_name")


def check_source(name: str, key: str) -> str:
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise VerifierConfigError(f"verifier_args.{key}: received {name!r}, allowed: a hub id or an existing local folder")
    return str(Path(name).expanduser()) if name.startswith("~") else name


def model_file(source: str, filename: str, what: str) -> str:
    """The path of `filename` from a local folder or a hub repository (downloaded once into the
    Hugging Face cache); VerifierConfigError when it cannot be had."""
    if is_local(source):
        path = Path(source).expanduser() / filename
        if not path.is_file():
            raise VerifierConfigError(f"{what}: {source!r} holds no {filename!r}")
        return str(path)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source, filename)
    except Exception as error:  # noqa: BLE001 - any hub failure means: cannot load this model
        raise VerifierConfigError(f"{what}: cannot fetch {filename!r} from {source!r}: {_first_line(error)}") from None


def checked_inputs(prompt: Any, images: Sequence[Any]) -> list[Image.Image]:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: received {type(prompt).__name__}, allowed: a text")
    return checked_images(images)


def load_error(what: str, source: str, error: BaseException) -> VerifierConfigError:
    return VerifierConfigError(f"{what}: cannot load {source!r}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class LocalRewardVerifier:
    """A scalar reward computed by a local model. Subclasses set `name`, `metric`, `DEFAULT_MODEL`,
    `EXTRA_OPTIONS`, and implement `_load() -> state`, `_encode_text(state, prompt)` and
    `_score_batch(state, text, images) -> list[(score, explanation)]`."""

    name: str = ""
    metric: str = ""
    metrics: tuple[str, ...] = ()
    default_metric: str = ""
    DEFAULT_MODEL: str = ""
    DEFAULT_BATCH_SIZE = DEFAULT_BATCH_SIZE
    EXTRA_OPTIONS: tuple[str, ...] = ()
    score_tolerance = 1e-4  # |batched - one at a time| allowed in fp32, on the metric's own scale
    batch_size: int = DEFAULT_BATCH_SIZE

    def __init__(self, args: VerifierArgs):
        self.args = args
        options = check_options(args.options, (*COMMON_OPTIONS, *self.EXTRA_OPTIONS))
        self.options = options
        self.model_name = resolve_model_name(args, options, self.DEFAULT_MODEL)
        self.batch_size = positive_int(options.get("batch_size", self.DEFAULT_BATCH_SIZE), "batch_size")
        self.device = resolve_device(args.device)
        self.dtype_name = resolve_dtype(options.get("torch_dtype"), self.device)
        self._configure(options)
        self._state: Any = None
        self._lock = threading.Lock()

    def _configure(self, options: dict[str, Any]) -> None:
        """Check the verifier's own options (construction time: no model is loaded)."""

    # -- loading -----------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._state is not None

    def load(self) -> None:
        """Load the model now (otherwise the first `score` does). Safe to call twice, from any thread."""
        with self._lock:
            if self._state is None:
                self._state = self._load()

    def _load(self) -> Any:
        raise NotImplementedError

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]:
        """One Grades per image, in input order (see the module docstring of the verifier)."""
        images = checked_inputs(prompt, images)
        if not images:
            return []
        import torch

        with self._lock:  # one model: calls from several threads run one after another
            if self._state is None:
                self._state = self._load()
            state = self._state
            results: list[tuple[float, str]] = []
            with torch.inference_mode():
                text = self._encode_text(state, prompt)
                for start in range(0, len(images), self.batch_size):
                    results.extend(self._score_batch(state, text, images[start : start + self.batch_size]))
        grades = []
        for index, (value, explanation) in enumerate(results):
            if not math.isfinite(value):
                raise VerifierError(f"{self.name}: the score of image {index} is {value} (not a finite number)", index)
            grades.append(Grades({self.metric: AspectGrade(explanation=explanation, score=float(value))}))
        return grades

    def _encode_text(self, state: Any, prompt: str) -> Any:
        return None

    def _score_batch(self, state: Any, text: Any, images: list[Image.Image]) -> list[tuple[float, str]]:
        raise NotImplementedError


@contextmanager
def quiet_load_report():
    """Silence transformers' load report while loading one tower out of a two-tower checkpoint (its
    list of the other tower's weights as UNEXPECTED is expected, not news; the caller checks the
    missing keys itself)."""
    report = logging.getLogger("transformers.modeling_utils")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        yield
    finally:
        report.setLevel(level)


def rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
