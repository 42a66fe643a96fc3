"""The LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor), metric
"laion_aesthetic_score": how beautiful an image looks, about 1..10 (the AVA rating scale it was
trained on; most images land between 4 and 7). It never reads the prompt.

    e = E_image(image)                  CLIP ViT-L/14's projected image embedding (768), openai/clip-vit-large-patch14
    x = e / ||e||_2                     L2-normalised (a zero vector stays zero), in fp32
    laion_aesthetic_score = MLP(x)      Linear(768, 1024) -> Dropout(0.2) -> Linear(1024, 128) -> Dropout(0.2)
                                        -> Linear(128, 64) -> Dropout(0.1) -> Linear(64, 16) -> Linear(16, 1)

The MLP has no activation between its layers (as published: it is an affine map in five factors) and
its dropouts are inactive at inference. Its weights are tt-scale-flux's choice,
trl-lib/ddpo-aesthetic-predictor "aesthetic-model.pth" (the state dict of this very MLP, keys
layers.{0,2,4,6,7}.{weight,bias}, as in improved-aesthetic-predictor's
sac+logos+ava1-l14-linearMSE.pth); `options.head` takes another: a local .pth file or a hub repository
holding "aesthetic-model.pth". When model_name is a local folder holding "aesthetic-model.pth" (as the
tests' tiny model does), that one is the default. The CLIP runs in the model dtype (fp16 on a GPU),
the normalisation and the MLP in fp32.

Verified offline (tests/test_scalar_verifiers.py): the whole path on a tiny CLIP saved with
save_pretrained and reloaded through CLIPVisionModelWithProjection.from_pretrained, with a head file
loaded through the same torch.load path; the score equals a float64 hand computation of the
normalisation and the five affine layers. Not verified here: the published weights (no hub access).

Options: batch_size (16), torch_dtype (fp16 on GPU; bf16/fp32), model_name (as args.model_name, for
an ensemble member), head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ttsf_core.verifiers._local import LocalRewardVerifier, is_local, load_error, model_file, quiet_load_report, rgb
from ttsf_core.verifiers.base import VerifierConfigError

CLIP_MODEL = "openai/clip-vit-large-patch14"
HEAD_REPO = "trl-lib/ddpo-aesthetic-predictor"
HEAD_FILE = "aesthetic-model.pth"
# (in, out) of the MLP's Linear layers, the first taking the CLIP embedding; their indices in `layers`.
HIDDEN_SIZES = (1024, 128, 64, 16, 1)
LINEAR_INDICES = (0, 2, 4, 6, 7)
DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


def build_head(embedding_dim: int):
    """The improved-aesthetic-predictor MLP (its module layout, so its state dict loads as it is)."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = (embedding_dim, *HIDDEN_SIZES)
            layers: list[nn.Module] = []
            for inputs, outputs in zip(sizes, sizes[1:]):
                layers.append(nn.Linear(inputs, outputs))
                if len(layers) in DROPOUTS:
                    layers.append(nn.Dropout(DROPOUTS[len(layers)]))
            self.layers = nn.Sequential(*layers)

        def forward(self, embed):
            return self.layers(embed)

    return AestheticMLP()


def load_head(path: str, embedding_dim: int):
    """The MLP from a state-dict file; VerifierConfigError when its keys or shapes do not fit."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - an unreadable file, whatever torch says
        raise load_error("laion_aesthetic: head", path, error) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise VerifierConfigError(f"laion_aesthetic: head {path!r} holds a {type(state).__name__}, allowed: a state dict")
    head = build_head(embedding_dim)
    expected = head.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        said = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(unexpected)}" if unexpected else "",
            ", ".join(f"{k} is {tuple(state[k].shape)}, the model needs {tuple(expected[k].shape)}" for k in wrong),
        ) if part)
        raise VerifierConfigError(f"laion_aesthetic: head {path!r} does not fit a {embedding_dim}-dimensional CLIP "
                                  f"embedding: {said}")
    head.load_state_dict(state)
    return head.float().eval()


class LaionAestheticVerifier(LocalRewardVerifier):
    """LAION improved aesthetic predictor on CLIP ViT-L/14 image embeddings (see the module docstring)."""

    name = "laion_aesthetic"
    metric = "laion_aesthetic_score"
    metrics = ("laion_aesthetic_score",)
    default_metric = "laion_aesthetic_score"
    DEFAULT_MODEL = CLIP_MODEL
    EXTRA_OPTIONS = ("head",)
    score_tolerance = 1e-4

    def _configure(self, options: dict[str, Any]) -> None:
        head = options.get("head")
        if head is not None and not (isinstance(head, str) and head.strip()):
            raise VerifierConfigError(f"verifier_args.options.head: received {head!r}, allowed: a .pth file or a hub id")
        if head is None:
            local = Path(self.model_name).expanduser() / HEAD_FILE
            head = str(local) if is_local(self.model_name) and local.is_file() else HEAD_REPO
        head = head.strip()
        if head.startswith(("/", "./", "../", "~")) or head.endswith((".pth", ".pt", ".bin")):
            path = Path(head).expanduser()
            if not path.is_file() and not path.is_dir():
                raise VerifierConfigError(f"verifier_args.options.head: received {head!r}, allowed: an existing "
                                          f"state-dict file, or a hub id holding {HEAD_FILE!r}")
        self.head_name = head

    def _head_path(self) -> str:
        path = Path(self.head_name).expanduser()
        if path.is_file():
            return str(path)
        return model_file(self.head_name, HEAD_FILE, "laion_aesthetic: head")

    def _load(self) -> dict[str, Any]:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            processor = CLIPImageProcessor.from_pretrained(self.model_name)
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise load_error("laion_aesthetic: image processor", self.model_name, error) from None
        try:
            with quiet_load_report():  # a CLIPModel checkpoint: its text tower is left out on purpose
                model, info = CLIPVisionModelWithProjection.from_pretrained(
                    self.model_name, dtype=self.torch_dtype, output_loading_info=True)
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise load_error("laion_aesthetic: model", self.model_name, error) from None
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise VerifierConfigError(f"laion_aesthetic: model {self.model_name!r} lacks vision weights: "
                                      f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        head = load_head(self._head_path(), int(model.config.projection_dim))
        return {"model": model.to(self.device).eval(), "processor": processor, "head": head.to(self.device)}

    def _score_batch(self, state, text, images):
        import torch

        pixels = state["processor"](images=[rgb(image) for image in images], return_tensors="pt")["pixel_values"]
        embeds = state["model"](pixel_values=pixels.to(self.device, self.torch_dtype)).image_embeds.float()
        norms = torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)
        normalised = embeds / torch.where(norms == 0, torch.ones_like(norms), norms)
        values = state["head"](normalised).squeeze(-1).tolist()
        return [(value, f"LAION aesthetic score {value:.3f} (improved-aesthetic-predictor MLP on the L2-normalised "
                        f"CLIP image embedding of {self.model_name}; AVA scale, about 1-10)") for value in values]
