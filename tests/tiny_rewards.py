"""Tiny reward models built offline under a fixed seed, saved, and loaded back by the verifiers through
their real `from_pretrained` / checkpoint paths (pass the folder as `model_name`).

  tiny_clip("random")   CLIPModel + CLIPProcessor, random weights (seed 0): clip, pickscore, benchmarks
  tiny_clip("colour")   the same shapes' kind of CLIP with weights set by hand so its embeddings are KNOWN:
                        an image's embedding is the sum over its patches of each patch's unit mean-colour
                        direction (r, g, b); a prompt's is the sum of the directions of its colour words:
                        "red", "green", "blue" the unit axes, "black" their opposite -(r + g + b) (every
                        other token adds nothing). So cos(a red image, "a red square") = 1, a purple image
                        1/sqrt(2), a blue one 0, and cos(a red image, "a black square") = -1/sqrt(3);
                        logit_scale.exp() = 100. (An all-black image has no colour direction at all: its
                        embedding is zero and its cosine undefined.)
  tiny_aesthetic()      the random tiny CLIP (its vision tower is read through CLIPVisionModelWithProjection)
                        plus "aesthetic-model.pth", a random improved-aesthetic-predictor MLP on its
                        16-dimensional embedding
  tiny_image_reward()   ImageReward.pt in the reference's key layout (blip.visual_encoder.*,
                        blip.text_encoder.*, mlp.*; random, seed 0), med_config.json, a BERT tokenizer

Each is built once per session under TTSF_CACHE_DIR (as tests/conftest.py's tiny FLUX) and renamed into
place whole. The `build_*` functions take sizes, so benchmarks/bench_verifiers.py --gpu builds the
published architectures (random weights) with the same code.

Tokenizers are written locally: CLIP's from vocab.json + merges.txt (the transformers 5 `vocab_file=`
constructor silently builds a 2-token vocab, so from_pretrained over a folder it is), BERT's from a
written vocab.txt.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

SEED = 0
LETTERS = "abcdefghijklmnopqrstuvwxyz"
COLOUR_WORDS = ("red", "green", "blue")  # the colour CLIP's embedding axes, in this order
# Words that become single tokens (the rest of a prompt is spelled out in letters).
CLIP_WORDS = ("green", "red", "blue", "black", "a", "square", "photo", "of", "and")
BERT_WORDS = ("a", "red", "green", "blue", "square", "photo", "of", "and", "tiny", "astronaut", "moon",
              "lighthouse", "fox", "cat", "dog", "on", "the", "in", "at", "with")

# Sizes of the tiny models (the published ones are in benchmarks/bench_verifiers.py).
TINY_CLIP = {
    "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77),
    "vision": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8),
    "projection_dim": 16,
}
TINY_IMAGE_REWARD = {
    # BLIP's ViTs have heads of 64 (the loader infers heads = width / 64 from the checkpoint).
    "vision": dict(width=128, depth=2, patch=16, image_size=32, mlp=256),
    "text": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64),
}


def cache_root() -> Path:
    return Path(os.environ.get("TTSF_CACHE_DIR") or Path(tempfile.gettempdir()) / "ttsf-tiny-rewards") / "tiny-rewards"


def _ensure(name: str, build) -> Path:
    """Build into a private folder and rename it into place; a finished folder is reused."""
    path = cache_root() / name
    if (path / "DONE").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    build(partial)
    (partial / "DONE").write_text("ok\n")
    try:
        partial.rename(path)
    except OSError:  # another process finished first: theirs is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
    return path


def tiny_clip(kind: str = "random") -> Path:
    if kind not in ("random", "colour"):
        raise ValueError(f"kind: received {kind!r}, allowed: random, colour")
    return _ensure(f"clip-{kind}", lambda path: build_clip(path, colour=kind == "colour"))


def tiny_aesthetic() -> Path:
    def build(path: Path) -> None:
        build_clip(path)
        write_aesthetic_head(path / "aesthetic-model.pth", TINY_CLIP["projection_dim"])

    return _ensure("aesthetic", build)


def tiny_image_reward() -> Path:
    return _ensure("image-reward", lambda path: build_image_reward(path))


# -- CLIP ---------------------------------------------------------------------------------------
def clip_tokenizer(folder: Path, words=CLIP_WORDS):
    """A CLIP BPE tokenizer over letters plus `words` as single tokens, saved in `folder`."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    merges: list[str] = []
    for word in words:  # each word merged left to right into one token; earlier words' merges first
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{current} {symbol}"
            if merge not in merges:
                merges.append(merge)
            current += symbol
            vocab.setdefault(current, len(vocab))
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "vocab.json").write_text(json.dumps(vocab))
        Path(scratch, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids != [vocab[word + "</w>"]]:
            raise AssertionError(f"the tiny CLIP tokenizer splits {word!r} into {ids}")
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_clip(folder: Path, colour: bool = False, sizes: dict | None = None, tokenizer=None) -> Path:
    """A CLIPModel + CLIPProcessor saved in `folder` (random under SEED, or the hand-set colour model)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    sizes = sizes or TINY_CLIP
    tokenizer = tokenizer or clip_tokenizer(Path(folder))
    text = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id) | sizes["text"]
    vision = dict(sizes["vision"])
    projection_dim = sizes["projection_dim"]
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    if colour:  # 8 channels: (r, g, b, -r, -g, -b, n, -n); one layer; 3-dimensional embeddings
        text.update(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
        vision.update(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
        projection_dim = 3
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # pixels stay in 0..1
    # The published configs repeat projection_dim in both towers' configs (CLIPVisionModelWithProjection
    # reads the vision one).
    text["projection_dim"] = vision["projection_dim"] = projection_dim
    torch.manual_seed(SEED)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    if colour:
        _set_colour_weights(model, tokenizer)
    model.save_pretrained(folder)
    size = vision["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=mean, image_std=std)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)


def _set_colour_weights(model, tokenizer) -> None:
    """Every block passes its input through: attention uniform (q = k = 0) with v and out = identity,
    MLPs zero. Embeddings hold zero-mean 8-vectors, so each LayerNorm only rescales them."""
    import torch

    with torch.no_grad():
        for tower in (model.text_model, model.vision_model):
            for layer in tower.encoder.layers:
                attention = layer.self_attn
                for projection in (attention.q_proj, attention.k_proj):
                    projection.weight.zero_()
                    projection.bias.zero_()
                for projection in (attention.v_proj, attention.out_proj):
                    projection.weight.copy_(torch.eye(8))
                    projection.bias.zero_()
                layer.mlp.fc2.weight.zero_()
                layer.mlp.fc2.bias.zero_()
                for norm in (layer.layer_norm1, layer.layer_norm2):
                    norm.weight.fill_(1.0)
                    norm.bias.zero_()
        neutral = torch.tensor([0, 0, 0, 0, 0, 0, 1.0, -1.0])
        embeddings = model.text_model.embeddings
        embeddings.token_embedding.weight.copy_(neutral.expand_as(embeddings.token_embedding.weight))
        for axis, word in enumerate(COLOUR_WORDS):
            vector = torch.zeros(8)
            vector[axis], vector[axis + 3] = 1.0, -1.0
            embeddings.token_embedding.weight[tokenizer.convert_tokens_to_ids(word + "</w>")] = vector
        black = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0, 0]) / math.sqrt(3)  # same norm as the others
        embeddings.token_embedding.weight[tokenizer.convert_tokens_to_ids("black</w>")] = black
        embeddings.position_embedding.weight.zero_()
        vision = model.vision_model.embeddings
        vision.class_embedding.zero_()
        vision.position_embedding.weight.zero_()
        patch = vision.patch_embedding.weight  # (8, 3, p, p): channel k = +mean colour k, 3 + k = -mean colour k
        patch.zero_()
        area = patch.shape[-1] * patch.shape[-2]
        for axis in range(3):
            patch[axis, axis] = 1.0 / area
            patch[axis + 3, axis] = -1.0 / area
        for norm in (model.text_model.final_layer_norm, model.vision_model.pre_layrnorm, model.vision_model.post_layernorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        picker = torch.zeros(3, 8)  # embedding axis k = channel k - channel 3 + k
        for axis in range(3):
            picker[axis, axis], picker[axis, axis + 3] = 1.0, -1.0
        model.visual_projection.weight.copy_(picker)
        model.text_projection.weight.copy_(picker)
        model.logit_scale.fill_(math.log(100.0))


# -- LAION aesthetic head -----------------------------------------------------------------------
def write_aesthetic_head(path: Path, embedding_dim: int) -> Path:
    """A random improved-aesthetic-predictor MLP's state dict (keys layers.{0,2,4,6,7}.*), as torch.save."""
    import torch

    from ttsf_core.verifiers.aesthetic import build_head

    torch.manual_seed(SEED)
    head = build_head(embedding_dim)
    with torch.no_grad():
        for name, parameter in head.named_parameters():  # biases too, so a lost bias would show
            parameter.normal_(0.0, 1.0 / math.sqrt(parameter.shape[-1]) if parameter.dim() > 1 else 0.5)
    torch.save(head.state_dict(), path)
    return Path(path)


# -- ImageReward --------------------------------------------------------------------------------
def bert_tokenizer(folder: Path, words=BERT_WORDS):
    """A WordPiece BERT tokenizer (uncased) over the given words plus letters, saved in `folder`."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab += [letter for letter in LETTERS if letter not in vocab] + [f"##{letter}" for letter in LETTERS]
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer.from_pretrained(scratch, do_lower_case=True, model_max_length=512)
    if len(tokenizer) != len(vocab):
        raise AssertionError(f"the tiny BERT tokenizer has {len(tokenizer)} tokens, not {len(vocab)}")
    tokenizer.save_pretrained(folder)
    return tokenizer


def med_config(vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
               intermediate_size: int, max_position_embeddings: int = 512) -> dict:
    """BLIP's med_config.json (bert-base-uncased with cross-attention) at the given sizes."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


def reference_state_dict(vision: dict, med: dict, seed: int = SEED) -> dict:
    """Random tensors under the names and shapes of the reference ImageReward module's state dict
    (BLIP's vit.py VisionTransformer as blip.visual_encoder, med.py BertModel(add_pooling_layer=False)
    as blip.text_encoder, plus blip.vision_proj / text_proj and the MLP), written from the reference
    code, not from ttsf's loader."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    width, depth, patch, size, mlp = (vision[k] for k in ("width", "depth", "patch", "image_size", "mlp"))
    hidden, inter = med["hidden_size"], med["intermediate_size"]
    state: dict[str, torch.Tensor] = {}

    def weight(name: str, *shape: int, scale: float | None = None) -> None:
        fan_in = shape[-1] if len(shape) > 1 else 1
        std = scale if scale is not None else 1.0 / math.sqrt(fan_in)
        state[name] = torch.randn(*shape, generator=generator) * std

    def norm(name: str, dim: int) -> None:
        state[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(dim, generator=generator)
        state[f"{name}.bias"] = 0.1 * torch.randn(dim, generator=generator)

    def linear(name: str, inputs: int, outputs: int) -> None:
        weight(f"{name}.weight", outputs, inputs)
        weight(f"{name}.bias", outputs, scale=0.05)

    v = "blip.visual_encoder"
    weight(f"{v}.cls_token", 1, 1, width, scale=0.5)
    weight(f"{v}.pos_embed", 1, (size // patch) ** 2 + 1, width, scale=0.5)
    weight(f"{v}.patch_embed.proj.weight", width, 3, patch, patch, scale=1.0 / math.sqrt(3 * patch * patch))
    weight(f"{v}.patch_embed.proj.bias", width, scale=0.05)
    for block in range(depth):
        b = f"{v}.blocks.{block}"
        norm(f"{b}.norm1", width)
        linear(f"{b}.attn.qkv", width, 3 * width)
        linear(f"{b}.attn.proj", width, width)
        norm(f"{b}.norm2", width)
        linear(f"{b}.mlp.fc1", width, mlp)
        linear(f"{b}.mlp.fc2", mlp, width)
    norm(f"{v}.norm", width)

    t = "blip.text_encoder"
    weight(f"{t}.embeddings.word_embeddings.weight", med["vocab_size"], hidden, scale=1.0)
    weight(f"{t}.embeddings.position_embeddings.weight", med["max_position_embeddings"], hidden, scale=0.5)
    state[f"{t}.embeddings.position_ids"] = torch.arange(med["max_position_embeddings"]).expand(1, -1).clone()
    norm(f"{t}.embeddings.LayerNorm", hidden)
    for index in range(med["num_hidden_layers"]):
        layer = f"{t}.encoder.layer.{index}"
        for attention, key_width in (("attention", hidden), ("crossattention", width)):
            linear(f"{layer}.{attention}.self.query", hidden, hidden)
            linear(f"{layer}.{attention}.self.key", key_width, hidden)
            linear(f"{layer}.{attention}.self.value", key_width, hidden)
            linear(f"{layer}.{attention}.output.dense", hidden, hidden)
            norm(f"{layer}.{attention}.output.LayerNorm", hidden)
        linear(f"{layer}.intermediate.dense", hidden, inter)
        linear(f"{layer}.output.dense", inter, hidden)
        norm(f"{layer}.output.LayerNorm", hidden)
    linear("blip.vision_proj", width, 256)
    linear("blip.text_proj", hidden, 256)
    for index, (inputs, outputs) in zip((0, 2, 4, 6, 7), zip((hidden, 1024, 128, 64, 16), (1024, 128, 64, 16, 1))):
        linear(f"mlp.layers.{index}", inputs, outputs)
    return state


def build_image_reward(folder: Path, vision: dict | None = None, text: dict | None = None, tokenizer=None) -> Path:
    """ImageReward.pt (reference layout) + med_config.json + tokenizer files in `folder`."""
    import torch

    vision = vision or TINY_IMAGE_REWARD["vision"]
    text = text or TINY_IMAGE_REWARD["text"]
    tokenizer = tokenizer or bert_tokenizer(Path(folder))
    med = med_config(vocab_size=max(len(tokenizer) + 2, text.get("vocab_size", 0)), **{k: v for k, v in text.items() if k != "vocab_size"})
    Path(folder, "med_config.json").write_text(json.dumps(med, indent=2))
    torch.save(reference_state_dict(vision, med), Path(folder, "ImageReward.pt"))
    return Path(folder)
