"""A tiny FLUX built entirely offline: local tokenizers, random weights under a fixed seed.

It is saved with `save_pretrained` and loaded back through the very same `from_pretrained` path as
FLUX.1-dev, so every code path a real run takes is exercised on a CPU in seconds. Text encoders
and transformer widths follow diffusers' own FLUX pipeline tests; the latent geometry follows the real
model (16 latent channels packed 2x2 into 64, a VAE that downsamples 8x), so 1024x1024 gives packed
latents of shape (1, 4096, 64) exactly as FLUX.1-dev does. `width_multiplier` / `num_layers` scale
the transformer for benchmarks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ttsf_core.config import TINY_FLUX as TINY_FLUX_NAME
_BUILD_SEED = 0
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def default_tiny_dir(width_multiplier: int = 1, num_layers: int = 1) -> Path:
    root = os.environ.get("TTSF_CACHE_DIR") or Path.home() / ".cache" / "ttsf"
    sized = "" if (width_multiplier, num_layers) == (1, 1) else f"-w{width_multiplier}-l{num_layers}"
    return Path(root) / (TINY_FLUX_NAME + sized)


def ensure_tiny_flux(path: str | Path | None = None, width_multiplier: int = 1, num_layers: int = 1) -> Path:
    """Build and save the tiny FLUX at `path` unless a complete one is already there."""
    path = Path(path) if path is not None else default_tiny_dir(width_multiplier, num_layers)
    if (path / "model_index.json").is_file():
        return path
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    build_tiny_flux(width_multiplier=width_multiplier, num_layers=num_layers).save_pretrained(partial)
    try:
        partial.rename(path)
    except OSError:  # another process finished first: theirs is as good as ours
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return path


def build_tiny_flux(width_multiplier: int = 1, num_layers: int = 1):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    import torch

    torch.manual_seed(_BUILD_SEED)
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

    torch.manual_seed(_BUILD_SEED)
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

    torch.manual_seed(_BUILD_SEED)
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
