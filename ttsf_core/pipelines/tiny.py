"""Tiny pipelines built entirely offline: local tokenizers, random weights under a fixed seed.

Each is saved with `save_pretrained` and loaded back through the very same `from_pretrained` path as
the hub model it stands for, so every code path a real run takes is exercised on a CPU in seconds.
`--model tiny-flux` is the tiny FLUX.1 built here; `tiny-flux2`, `tiny-flux2-klein`, `tiny-qwen-image`,
`tiny-sd3` and `tiny-z-image` are built by their family's `build_tiny` (ttsf_core/pipelines/families/)
from the shared parts below, and `ensure_tiny_model(name)` builds any of them once into TTSF_CACHE_DIR.

Tiny FLUX: text encoders and transformer widths follow diffusers' own FLUX pipeline tests; the latent
geometry follows the real model (16 latent channels packed 2x2 into 64, a VAE that downsamples 8x), so
1024x1024 gives packed latents of shape (1, 4096, 64) exactly as FLUX.1-dev does. `width_multiplier` /
`num_layers` scale the transformer for benchmarks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ttsf_core.model_defaults import TINY_FLUX as TINY_FLUX_NAME

BUILD_SEED = 0
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEXT_WIDTH = 16  # hidden size of the tiny LLM-style text encoders (Qwen3, Qwen2.5-VL, Mistral3)
# Special tokens of the Qwen/Mistral-style chat tokenizer, as the pipelines' templates spell them.
_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>")
# A ChatML template taking a message's content as text or as a list of {"type": "text"} parts (what
# FLUX.2's processor is given); `enable_thinking` and the like are accepted and ignored.
_CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                  "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                  "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
                  "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def cache_root() -> Path:
    return Path(os.environ.get("TTSF_CACHE_DIR") or Path.home() / ".cache" / "ttsf")


def default_tiny_dir(width_multiplier: int = 1, num_layers: int = 1) -> Path:
    sized = "" if (width_multiplier, num_layers) == (1, 1) else f"-w{width_multiplier}-l{num_layers}"
    return cache_root() / (TINY_FLUX_NAME + sized)


def ensure_tiny_model(name: str) -> Path:
    """The saved folder of the tiny model `name` (`--model tiny-...`), built once under TTSF_CACHE_DIR.
    A builder change bumps its family's tiny_version, which names a fresh folder."""
    from ttsf_core.pipelines.families import family_of_tiny, tiny_models

    family = family_of_tiny(name)
    if family is None:
        raise ValueError(f"model: received {name!r}, allowed: one of {', '.join(sorted(tiny_models()))}")
    if name == TINY_FLUX_NAME:
        return ensure_tiny_flux()
    return _build_once(cache_root() / f"{name}-v{family.tiny_version}", family.build_tiny)


def _build_once(path: Path, build) -> Path:
    if (path / "model_index.json").is_file():
        return path
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    build().save_pretrained(partial)
    try:
        partial.rename(path)
    except OSError:  # another process finished first: theirs is as good as ours
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return path


def ensure_tiny_flux(path: str | Path | None = None, width_multiplier: int = 1, num_layers: int = 1) -> Path:
    """Build and save the tiny FLUX at `path` unless a complete one is already there."""
    path = Path(path) if path is not None else default_tiny_dir(width_multiplier, num_layers)
    return _build_once(path, lambda: build_tiny_flux(width_multiplier=width_multiplier, num_layers=num_layers))


def build_tiny_flux(width_multiplier: int = 1, num_layers: int = 1):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    import torch

    torch.manual_seed(BUILD_SEED)
    heads = 2 * width_multiplier
    latent_channels = 16
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,
        num_layers=num_layers,
        num_single_layers=num_layers,
        attention_head_dim=16,
        num_attention_heads=heads,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    vae_blocks = (4, 4, 4, 4)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    text_encoder, tokenizer = _tiny_clip()
    text_encoder_2, tokenizer_2 = _tiny_t5()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()  # dropout would otherwise make outputs differ call to call
    return pipe


def _tiny_clip():
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import torch

    torch.manual_seed(BUILD_SEED)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    model = CLIPTextModel(config).eval()
    # Byte-level BPE over single letters; the vocab_file= constructor silently builds a 2-token
    # vocab in transformers 5, so the tokenizer is loaded from a folder instead.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in _LETTERS:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    return model, tokenizer


def _tiny_t5():
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    import torch

    torch.manual_seed(BUILD_SEED)
    config = T5Config(vocab_size=1103, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=5,
                      relative_attention_num_buckets=8, decoder_start_token_id=0)
    model = T5EncoderModel(config).eval()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(letter, -1.0) for letter in _LETTERS] + [("\u2581" + letter, -1.5) for letter in _LETTERS]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    with tempfile.TemporaryDirectory() as folder:
        backend.save(str(Path(folder, "tokenizer.json")))
        tokenizer = T5TokenizerFast(tokenizer_file=str(Path(folder, "tokenizer.json")), pad_token="<pad>",
                                    eos_token="</s>", unk_token="<unk>", extra_ids=0, model_max_length=512)
    return model, tokenizer


def chat_tokenizer():
    """A byte-level BPE tokenizer (one token a byte, no merges) with the special tokens and a ChatML chat
    template, standing in for the Qwen2/Qwen3 and Mistral tokenizers of FLUX.2, Qwen-Image and Z-Image.
    Built in a folder and loaded with from_pretrained (as DESIGN.md notes for CLIP, constructors given
    files can silently build a different vocab in transformers 5)."""
    import tempfile

    from transformers import Qwen2Tokenizer

    vocab = {character: index for index, character in enumerate(_byte_characters())}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n")
        tokenizer = Qwen2Tokenizer.from_pretrained(folder, additional_special_tokens=list(_SPECIAL[1:]),
                                                   model_max_length=4096)
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def special_ids(tokenizer) -> dict[str, int]:
    """Token ids the tiny text encoders' configs name (bos/eos/pad, the image placeholders)."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL}
    return {"pad": ids["<|endoftext|>"], "bos": ids["<|im_start|>"], "eos": ids["<|im_end|>"],
            "image": ids["<|image_pad|>"], "video": ids["<|video_pad|>"], "vision_start": ids["<|vision_start|>"],
            "vision_end": ids["<|vision_end|>"]}


def evaluated(pipe):
    """Every module of `pipe` in eval mode (dropout would otherwise make outputs differ call to call)."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _byte_characters() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 characters a byte-level BPE vocabulary starts from."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[byte] = chr(byte)
        else:
            characters[byte] = chr(256 + extra)
            extra += 1
    return [characters[byte] for byte in range(256)]
