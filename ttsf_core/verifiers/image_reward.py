"""ImageReward (Xu et al. 2023, arXiv 2304.05977; THUDM/ImageReward), metric "image_reward": a human
preference reward for a prompt-image pair, standardised so that over its training prompts it is about
N(0, 1) (higher is better; most generations land between -2 and 2).

What it computes, as the reference package's `ImageReward.score` / `inference_rank` does:
    pixels  = Normalize(CLIP mean/std)(ToTensor(CenterCrop(224)(Resize(224, bicubic)(image)).convert("RGB")))
    v       = BLIP ViT-L/16 (1024 wide, 24 blocks, 16 heads, LayerNorm eps 1e-6)(pixels)   all 197 tokens
    t       = bert-base-uncased tokens of the prompt, padded to 35 and truncated there ([CLS] first)
    h       = BLIP's BERT text encoder (12 layers, each self-attention -> cross-attention to v -> FFN)(t, v)
    raw     = MLP(h[:, 0])   Linear(768, 1024) -> Linear(1024, 128) -> Linear(128, 64) -> Linear(64, 16)
              -> Linear(16, 1), no activations (dropouts between the first four, inactive at inference), fp32
    image_reward = (raw - 0.16717362830052426) / 1.0333394966054072

The prompt is tokenized once per call; the text encoder runs once per image (it cross-attends to that
image), `batch_size` images at a time.

Why not the `image-reward` package: `pip install image-reward` (1.5) beside this project's pins
replaces the CPU torch 2.13.0 with a CUDA torch 2.14 and pulls torchvision, timm 0.6.13 and fairscale;
and then `import ImageReward` fails twice over: it imports OpenAI's `clip` package, which it does not
declare, and its BLIP text encoder (models/BLIP/med.py) imports `apply_chunking_to_forward` from
transformers.modeling_utils, which transformers 5 no longer has. So ttsf builds the same network from
transformers' own BLIP modules (BlipVisionModel; BlipTextModel, whose layer and parameter names are
those of BLIP's med.py) and loads the published checkpoint through the key mapping below.

Checkpoint (`model_name`, default THUDM/ImageReward; a hub repository or a local folder):
  ImageReward.pt    the state dict of the reference's ImageReward module (blip.* and mlp.*); plain,
                    or under "model"/"state_dict"; a "module." prefix is dropped
  med_config.json   BLIP's BERT config (bert-base-uncased sizes, vocab 30524, add_cross_attention)
  tokenizer         the folder's own tokenizer files when it has them, else bert-base-uncased (as the
                    reference's init_tokenizer, plus its [DEC] bos token and [ENC] special token);
                    `options.tokenizer` names another
The vision transformer's sizes are read from the checkpoint's shapes (width from cls_token, depth
from the blocks, patch size from patch_embed, image size from pos_embed; heads = width / 64, as both
of BLIP's ViTs have), so the published checkpoint gives ViT-L/16 at 224 as the reference hard-codes.

Key mapping (reference name -> transformers module; KEY_MAP below is the one place it is written):
  blip.visual_encoder.cls_token             -> vision.embeddings.class_embedding
  blip.visual_encoder.pos_embed             -> vision.embeddings.position_embedding
  blip.visual_encoder.patch_embed.proj.*    -> vision.embeddings.patch_embedding.*
  blip.visual_encoder.blocks.N.norm1.*      -> vision.encoder.layers.N.layer_norm1.*
  blip.visual_encoder.blocks.N.attn.qkv.*   -> vision.encoder.layers.N.self_attn.qkv.*   (same q|k|v packing)
  blip.visual_encoder.blocks.N.attn.proj.*  -> vision.encoder.layers.N.self_attn.projection.*
  blip.visual_encoder.blocks.N.norm2.*      -> vision.encoder.layers.N.layer_norm2.*
  blip.visual_encoder.blocks.N.mlp.fcK.*    -> vision.encoder.layers.N.mlp.fcK.*
  blip.visual_encoder.norm.*                -> vision.post_layernorm.*   (applied to every token, as BLIP's norm)
  blip.text_encoder.<name>                  -> text.<name>   (embeddings.*, encoder.layer.N.{attention,
                                               crossattention}.{self,output}.*, intermediate.*, output.*)
  mlp.layers.{0,2,4,6,7}.*                  -> head.layers.{0,2,4,6,7}.*
  ignored (unused at inference): blip.vision_proj.*, blip.text_proj.*, blip.text_encoder.embeddings.position_ids
A missing key or a wrong shape is a VerifierConfigError naming it; any other extra key is logged.

What is verified, and what is not:
  - verified offline (tests/test_scalar_verifiers.py): on a tiny random checkpoint written in the
    reference's key layout (ImageReward.pt + med_config.json + a tokenizer, loaded by the code path the
    published one takes), the verifier's reward equals an independent float64 re-implementation of
    the reference forward pass (BLIP's vit.py and med.py, read off the reference code, working on the
    reference-named tensors), so the mapping, the q|k|v packing, which LayerNorm is which, the
    [CLS] feature, the head and the standardisation agree with the reference semantics; the
    preprocessing matches torchvision's Resize/CenterCrop arithmetic on test images;
  - checked once by hand, at full size (not in CI: the package does not install beside this project):
    the reference package's own ImageReward module (image-reward 1.5, in a separate virtualenv, with
    four shims for transformers 5: apply_chunking_to_forward and prune_linear_layer put back in
    modeling_utils, BertModel.init_weights/invert_attention_mask/get_head_mask restored, a local
    tokenizer for bert-base-uncased), ViT-L/16 + BERT-base with random weights, its state dict saved as
    ImageReward.pt (625 keys) and loaded here: the rewards of three images (300x200, 224x224, 181x307)
    agree with the package's `score` to 3.7e-7, torchvision preprocessing included; so the reference
    module's state-dict names are exactly the ones mapped here;
  - NOT verified: the published ImageReward.pt itself (it cannot be downloaded here): that its keys
    are exactly the reference module's state-dict names (the reference loads it with strict=False, so
    an absent key would have gone unnoticed there but is an error here), and that rewards match the
    reference package's to float precision on real weights and real images.

Options: batch_size (16), torch_dtype (fp16 on GPU; bf16/fp32; the head always fp32), model_name (as
args.model_name, for an ensemble member), tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from PIL import Image

from ttsf_core.verifiers._local import LocalRewardVerifier, check_source, is_local, load_error, model_file
from ttsf_core.verifiers.aesthetic import build_head
from ttsf_core.verifiers.base import VerifierConfigError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
DEFAULT_TOKENIZER = "bert-base-uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35
VISION_HEAD_DIM = 64  # BLIP's ViT-B/16 (768 = 12 x 64) and ViT-L/16 (1024 = 16 x 64)
VISION_LAYER_NORM_EPS = 1e-6  # BLIP's vit.py: partial(nn.LayerNorm, eps=1e-6)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")

# reference name (regex, after the "blip.visual_encoder." / "blip.text_encoder." / "mlp." prefix) -> ours
KEY_MAP: dict[str, list[tuple[str, str]]] = {
    "blip.visual_encoder.": [
        (r"cls_token", "embeddings.class_embedding"),
        (r"pos_embed", "embeddings.position_embedding"),
        (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
        (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
        (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
        (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
        (r"norm\.(weight|bias)", r"post_layernorm.\1"),
    ],
    "blip.text_encoder.": [(r"(.+)", r"\1")],
    "mlp.": [(r"(layers\.\d+\.(?:weight|bias))", r"\1")],
}
TARGETS = {"blip.visual_encoder.": "vision", "blip.text_encoder.": "text", "mlp.": "head"}
IGNORED_KEYS = (r"blip\.vision_proj\..*", r"blip\.text_proj\..*", r"blip\.text_encoder\.embeddings\.position_ids")


def map_checkpoint(state: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The reference's state dict split into {"vision", "text", "head"} state dicts under our names,
    and the keys no part takes (neither mapped nor known to be unused)."""
    parts: dict[str, dict[str, Any]] = {"vision": {}, "text": {}, "head": {}}
    left: list[str] = []
    for key, value in state.items():
        if any(re.fullmatch(pattern, key) for pattern in IGNORED_KEYS):
            continue
        for prefix, rules in KEY_MAP.items():
            if key.startswith(prefix):
                rest = key[len(prefix):]
                for pattern, target in rules:
                    if re.fullmatch(pattern, rest):
                        parts[TARGETS[prefix]][re.sub(f"^{pattern}$", target, rest)] = value
                        break
                else:
                    left.append(key)
                break
        else:
            left.append(key)
    return parts, left


def unwrap_checkpoint(state: Any) -> dict[str, Any]:
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict) and not any(
                k.startswith(("blip.", "mlp.")) for k in state):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise VerifierConfigError(f"image_reward: the checkpoint holds a {type(state).__name__}, allowed: a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def vision_geometry(vision_state: dict[str, Any]) -> dict[str, int]:
    """The BLIP ViT's sizes from its weights' shapes (see the module docstring)."""
    try:
        width = int(vision_state["embeddings.class_embedding"].shape[-1])
        patch = int(vision_state["embeddings.patch_embedding.weight"].shape[-1])
        positions = int(vision_state["embeddings.position_embedding"].shape[1])
        mlp = int(vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0])
    except KeyError as error:
        raise VerifierConfigError(f"image_reward: the checkpoint has no blip.visual_encoder weight for {error}") from None
    depth = 1 + max(int(key.split(".")[2]) for key in vision_state if key.startswith("encoder.layers."))
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1 or width % VISION_HEAD_DIM:
        raise VerifierConfigError(f"image_reward: a vision transformer of {positions} positions and width {width} "
                                  f"is not a square BLIP ViT with heads of {VISION_HEAD_DIM}")
    return {"hidden_size": width, "intermediate_size": mlp, "num_hidden_layers": depth,
            "num_attention_heads": width // VISION_HEAD_DIM, "image_size": grid * patch, "patch_size": patch}


def text_config_values(med: dict[str, Any], vision_width: int) -> dict[str, Any]:
    """BlipTextConfig fields from BLIP's med_config.json (a BertConfig), cross-attending to the ViT."""
    if med.get("add_cross_attention") in (False, "False", "false"):
        raise VerifierConfigError("image_reward: med_config.json says add_cross_attention false; ImageReward's "
                                  "text encoder cross-attends to the image")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise VerifierConfigError(f"image_reward: med_config.json position_embedding_type "
                                  f"{med['position_embedding_type']!r}, allowed: absolute")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id")
    missing = [key for key in keys[:5] if key not in med]
    if missing:
        raise VerifierConfigError(f"image_reward: med_config.json lacks {', '.join(missing)}")
    values = {key: med[key] for key in keys if key in med}
    return values | {"encoder_hidden_size": vision_width, "is_decoder": True, "hidden_dropout_prob": 0.0,
                     "attention_probs_dropout_prob": 0.0, "use_cache": False,
                     # Decoder-only ids, unused by the encoder (BlipTextConfig's defaults name bert-base ids).
                     "bos_token_id": None, "eos_token_id": None, "sep_token_id": None}


def preprocess(image: Image.Image, size: int):
    """torchvision's Resize(size, bicubic) -> CenterCrop(size) -> RGB -> ToTensor -> Normalize(CLIP),
    the reference's `_transform`, on PIL alone (torchvision does not import beside this torch)."""
    import numpy as np
    import torch

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std


def _load_part(module, state: dict[str, Any], part: str) -> None:
    """Load one part strictly: every weight the module has must be there, with its shape. The module may
    live on the meta device (built without spending time on a random init): the tensors are assigned."""
    import torch

    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    extra = sorted(set(state) - set(expected))
    if missing or wrong or extra:
        said = "; ".join(piece for piece in (
            f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "",
            ", ".join(f"{k} is {tuple(state[k].shape)}, the model needs {tuple(expected[k].shape)}" for k in wrong[:8]),
            f"not in the model: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}" if extra else "",
        ) if piece)
        raise VerifierConfigError(f"image_reward: the checkpoint's {part} weights do not fit: {said}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta and name.endswith("position_ids"):  # non-persistent: never in a state dict
            owner = module.get_submodule(name.rpartition(".")[0])
            owner.position_ids = torch.arange(buffer.shape[-1]).expand((1, -1))
    left = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if left:
        raise VerifierConfigError(f"image_reward: the checkpoint's {part} part leaves {', '.join(left[:8])} unset")


class ImageRewardModel:
    """BLIP ViT + BLIP BERT with cross-attention + the MLP head, on one device (see the module docstring)."""

    def __init__(self, vision, text, head, image_size: int, device: str, dtype):
        self.vision, self.text, self.head = vision, text, head
        self.image_size, self.device, self.dtype = image_size, device, dtype

    def raw_rewards(self, input_ids, attention_mask, pixel_values):
        """The head's outputs before standardisation, one per image (fp32)."""
        batch = pixel_values.shape[0]
        image_embeds = self.vision(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        output = self.text(
            input_ids=input_ids.expand(batch, -1),
            attention_mask=attention_mask.expand(batch, -1),
            encoder_hidden_states=image_embeds,
            is_decoder=False,
        )
        features = output.last_hidden_state[:, 0, :].float()
        return self.head(features).squeeze(-1)


def load_image_reward(source: str, tokenizer_source: str | None, device: str, dtype_name: str):
    """(model, tokenizer) from a checkpoint folder or hub repository (see the module docstring)."""
    import torch
    from transformers import AutoTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    checkpoint = model_file(source, CHECKPOINT_FILE, "image_reward: checkpoint")
    med_path = model_file(source, MED_CONFIG_FILE, "image_reward: text encoder config")
    try:
        state = unwrap_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True))
        med = json.loads(Path(med_path).read_text())
    except VerifierConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - an unreadable file, whatever the reader says
        raise load_error("image_reward: checkpoint", source, error) from None
    parts, left = map_checkpoint(state)
    if left:
        logger.warning("image_reward: %d checkpoint keys are not used: %s", len(left), ", ".join(left[:10]))
    geometry = vision_geometry(parts["vision"])
    with torch.device("meta"):  # no random init of ~400M weights that the checkpoint replaces
        vision = BlipVisionModel(BlipVisionConfig(**geometry, hidden_act="gelu", layer_norm_eps=VISION_LAYER_NORM_EPS))
        text = BlipTextModel(BlipTextConfig(**text_config_values(med, geometry["hidden_size"])), add_pooling_layer=False)
    head = build_head(text.config.hidden_size)
    for module, part in ((vision, "vision"), (text, "text"), (head, "head")):
        _load_part(module, parts[part], part)
    dtype = getattr(torch, dtype_name)
    vision.to(device, dtype).eval()
    text.to(device, dtype).eval()
    head.to(device, torch.float32).eval()

    tokenizer_source = tokenizer_source or (
        source if is_local(source) and any((Path(source).expanduser() / name).is_file() for name in _TOKENIZER_FILES)
        else DEFAULT_TOKENIZER)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise load_error("image_reward: tokenizer", tokenizer_source, error) from None
    # The reference's init_tokenizer: [DEC] as bos, [ENC] as an extra special token (no effect on a prompt's ids).
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) > text.config.vocab_size:
        raise VerifierConfigError(f"image_reward: tokenizer {tokenizer_source!r} has {len(tokenizer)} tokens, the "
                                  f"text encoder {text.config.vocab_size}")
    return ImageRewardModel(vision, text, head, geometry["image_size"], device, dtype), tokenizer


class ImageRewardVerifier(LocalRewardVerifier):
    """ImageReward: (MLP(BLIP(prompt, image)[CLS]) - mean) / std (see the module docstring)."""

    name = "image_reward"
    metric = "image_reward"
    metrics = ("image_reward",)
    default_metric = "image_reward"
    DEFAULT_MODEL = DEFAULT_MODEL
    EXTRA_OPTIONS = ("tokenizer",)
    score_tolerance = 1e-4

    def _configure(self, options: dict[str, Any]) -> None:
        tokenizer = options.get("tokenizer")
        if tokenizer is not None and not (isinstance(tokenizer, str) and tokenizer.strip()):
            raise VerifierConfigError(f"verifier_args.options.tokenizer: received {tokenizer!r}, allowed: a hub id or a local folder")
        self.tokenizer_name = check_source(tokenizer.strip(), "options.tokenizer") if tokenizer else None

    def _load(self):
        return load_image_reward(self.model_name, self.tokenizer_name, self.device, self.dtype_name)

    def _encode_text(self, state, prompt: str):
        model, tokenizer = state
        tokens = tokenizer(prompt, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt")
        return tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device)

    def _score_batch(self, state, text, images):
        import torch

        model, _ = state
        pixels = torch.stack([preprocess(image, model.image_size) for image in images])
        raw = model.raw_rewards(text[0], text[1], pixels).tolist()
        results = []
        for value in raw:
            reward = (value - REWARD_MEAN) / REWARD_STD
            results.append((reward, f"ImageReward {reward:.3f} = (raw {value:.4f} - {REWARD_MEAN:.4f}) / {REWARD_STD:.4f} "
                                    f"({self.model_name}: BLIP ViT + BERT cross-attention reward, standardised over "
                                    "its training prompts; higher is better)"))
        return results
