"""The end-to-end section of gpu_flux.py: ttsf's own search (`ttsf_core.usecases.runner.run`, the thread
executor) on a FLUX.1-dev-shaped FluxPipeline with random weights, graded by a stand-in verifier.

The pipeline: the full-size transformer (handed in by gpu_flux.py) and the full-size VAE
(AutoencoderKL with FLUX.1-dev's published vae/config.json), random bf16 weights built directly on
the device; small stand-in CLIP and T5 text encoders whose output widths are what the transformer
reads (pooled 768, joint_attention_dim 4096) with the offline tokenizers of ttsf's tiny FLUX. The
text encoders run once per prompt, so their size does not matter to the search's speed.

Nothing is saved but the configs: ttsf's checks before a run (the pipeline class, the VAE's scale
for the resolution check) read `model_index.json` and the component configs from a folder, so a
weightless copy is written (`write_skeleton`) and the loaded pipe is handed to CandidateGenerator
directly, as the CPU benchmarks hand theirs (24 GB of safetensors would take longer to write and
read back than the search itself).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import _common

# black-forest-labs/FLUX.1-dev vae/config.json (byte-identical to FLUX.1-schnell's).
FLUX_DEV_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
# --cpu-smoke: the same geometry (16 latent channels, 8x) with 4 channels a block, as ttsf's tiny FLUX.
SMOKE_VAE = {**FLUX_DEV_VAE, "block_out_channels": [4, 4, 4, 4], "layers_per_block": 1, "norm_num_groups": 1,
             "sample_size": 32}
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
STAND_IN = "gpu-flux-stand-in"


def built_on(device: str, dtype):
    """Modules constructed inside are created on `device` in `dtype`: no CPU or float32 copy."""
    import torch

    @contextlib.contextmanager
    def context():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                yield
        finally:
            torch.set_default_dtype(previous)

    return context()


def build_pipeline(transformer, vae_config: dict, device: str, dtype):
    """A FluxPipeline around `transformer` (left as it is: on its device, its speed options applied)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    with built_on(device, dtype):
        vae = AutoencoderKL(**vae_config)
    config = transformer.config
    text_encoder, tokenizer, text_encoder_2, tokenizer_2 = stand_in_text_encoders(
        config.pooled_projection_dim, config.joint_attention_dim)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        vae=vae.eval().requires_grad_(False),
        text_encoder=text_encoder.to(device, dtype),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.to(device, dtype),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stand_in_text_encoders(pooled_width: int, text_width: int):
    """One-layer CLIP (pooled output `pooled_width` wide) and T5 (`text_width` wide) with the
    offline letter tokenizers of ttsf's tiny FLUX; float32 on the CPU (moved by the caller)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from ttsf_core.pipelines.tiny import _tiny_clip, _tiny_t5

    _, tokenizer = _tiny_clip()
    _, tokenizer_2 = _tiny_t5()
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, vocab_size=1000, hidden_size=pooled_width,
        intermediate_size=256, num_attention_heads=4, num_hidden_layers=1, projection_dim=pooled_width,
        max_position_embeddings=77, hidden_act="gelu"))
    t5 = T5EncoderModel(T5Config(
        vocab_size=1103, d_model=text_width, d_ff=256, d_kv=64, num_heads=4, num_layers=1,
        relative_attention_num_buckets=8, decoder_start_token_id=0))
    return clip.eval().requires_grad_(False), tokenizer, t5.eval().requires_grad_(False), tokenizer_2


def write_skeleton(pipe, folder: Path) -> Path:
    """The pipeline's folder without weights: model_index.json, every component's config, the tokenizers."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)
    for name in ("transformer", "vae", "scheduler"):
        getattr(pipe, name).save_config(folder / name)
    for name in ("tokenizer", "tokenizer_2"):
        getattr(pipe, name).save_pretrained(folder / name)
    for name in ("text_encoder", "text_encoder_2"):
        getattr(pipe, name).config.save_pretrained(folder / name)
    return folder


class StandInVerifier:
    """imagestats grades after `delay_s` per call (one call grades a chunk of up to 8 images), as a
    remote grader answering in `delay_s` would; every call's interval is recorded."""

    name = STAND_IN
    delay_s = 1.0
    intervals: list[tuple[float, float]] = []

    def __init__(self, args):
        from ttsf_core.verifiers.imagestats import ImageStatsVerifier

        self.inner = ImageStatsVerifier(args.model_copy(update={"name": "imagestats"}))

    def score(self, prompt, images):
        start = time.perf_counter()
        time.sleep(self.delay_s)
        grades = self.inner.score(prompt, images)
        StandInVerifier.intervals.append((start, time.perf_counter()))
        return grades

    def close(self) -> None:
        pass


@contextlib.contextmanager
def stand_in_registered(delay_s: float):
    """The stand-in under its name in ttsf's verifier registry (as tests/test_flows.py registers its own)."""
    from ttsf_core.verifiers import registry

    StandInVerifier.delay_s, StandInVerifier.intervals = delay_s, []
    registry.BUILTIN_VERIFIERS[STAND_IN] = f"{StandInVerifier.__module__}:StandInVerifier"
    try:
        yield
    finally:
        registry.BUILTIN_VERIFIERS.pop(STAND_IN, None)


def search_config(skeleton: Path, output_dir: Path, prompts_file: Path, *, device: str, height: int, width: int,
                  text_len: int, steps: int, batch: int, prompts: int, rounds: int, pool: int, compile: bool,
                  quantize: str, low_vram: bool):
    from ttsf_core.config import build_config

    return build_config({
        "pretrained_model_name_or_path": str(skeleton),
        "torch_dtype": "bf16",
        "device": device,
        "use_low_gpu_vram": low_vram,
        "compile": compile,
        "quantize": quantize,
        "batch_size_for_img_gen": batch,
        "seed": 0,
        "pipeline_call_args": {"height": height, "width": width, "guidance_scale": 3.5,
                               "num_inference_steps": steps, "max_sequence_length": text_len},
        "verifier_args": {"name": STAND_IN},
        "search_args": {"search_method": "random", "search_rounds": rounds, "initial_pool_size": pool},
        "prompts": {"dataset": str(prompts_file), "num_prompts": prompts},
        "output_dir": str(output_dir),
    })


def call_sizes(config) -> list[int]:
    """The batch sizes of the search's pipeline calls (random search: pools of pool * 2**(r-1))."""
    from ttsf_core.resolve import resolve

    batch, sizes = config.batch_size_for_img_gen, set()
    for search_round in range(1, config.search_args.search_rounds + 1):
        pool = resolve(config).search.pool_size(search_round)
        if pool >= batch:
            sizes.add(batch)
        if pool % batch:
            sizes.add(pool % batch)
    return sorted(sizes)


class UtilizationSampler:
    """NVML's GPU utilization (share of time a kernel ran), sampled every `period_s` while running."""

    def __init__(self, device: str, period_s: float = 0.2):
        self.samples: list[int] = []
        self._device, self._period = device, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-utilization", daemon=True)
        self.error: str | None = None

    def _run(self) -> None:
        import torch

        while not self._stop.wait(self._period):
            try:
                self.samples.append(int(torch.cuda.utilization()))
            except Exception as error:  # noqa: BLE001 - no pynvml, or NVML unreadable: the share says so
                self.error = f"{type(error).__name__}: {error}"[:120]
                return

    def __enter__(self) -> "UtilizationSampler":
        if self._device == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def run_search(pipe, config, device: str, warm_up: bool = True) -> dict:
    """ttsf's search (`runner.run`, thread executor) on `pipe`, timed: wall time, the time the
    generator spent inside its pipeline calls (prompt encoding, noise, the call: what it holds its
    lock for), GPU idle = 1 - that / wall, peak GPU memory. `warm_up`: first one call of every batch
    size the search makes (1 step, another prompt), so that kernel choice and compilation are not timed."""
    import torch

    from ttsf_core.usecases import runner
    from ttsf_core.engine.generate import CandidateGenerator, seed_candidates
    from ttsf_core.resolve import resolve

    prepared = runner.prepare_run(config)
    warm_s = 0.0
    if warm_up:
        start = time.perf_counter()
        warm = CandidateGenerator(pipe, resolve(config))
        for size in call_sizes(config):
            warm.generate("a warm-up prompt", seed_candidates(list(range(10_000, 10_000 + size)), 1))
        _sync(device)
        warm_s = time.perf_counter() - start
    generator = CandidateGenerator(pipe, resolve(config))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    StandInVerifier.intervals = []
    try:
        with UtilizationSampler(device) as sampler, _common.generation_clock(generator) as (clock, _):
            start = time.perf_counter()
            _, outcome = runner.run(prepared, generator)
            end = time.perf_counter()
    finally:
        prepared.verifier.close()
    outcome.raise_first()
    wall, images = end - start, outcome.counts.images_generated
    verifying = sum(stop - begin for begin, stop in StandInVerifier.intervals)
    return {
        "prompts": len(prepared.prompts),
        "rounds": config.search_args.search_rounds,
        "steps": config.pipeline_call_args.num_inference_steps,
        "batch": config.batch_size_for_img_gen,
        "call_sizes": call_sizes(config),
        "images": images,
        "rounds_recorded": outcome.counts.rounds_recorded,
        "pipeline_calls": generator.counts.pipeline_calls,
        "prompt_encodings": generator.counts.prompt_encodings,
        "verifier_calls": len(StandInVerifier.intervals),
        "verifier_s": verifying,
        "verifier_latency_s": StandInVerifier.delay_s,
        "warm_up_s": warm_s,
        "wall_s": wall,
        "generating_s": clock.seconds,
        "images_per_s": images / wall if wall else None,
        "s_per_image": wall / images if images else None,
        "generating_s_per_image": clock.seconds / images if images else None,
        "gpu_idle": max(0.0, 1.0 - clock.seconds / wall) if wall else None,
        "head_s": (clock.first_start - start) if clock.first_start is not None else None,
        "tail_s": end - clock.last_end if clock.last_end else None,
        "nvml_utilization": sampler.mean(),
        "nvml_note": sampler.error,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
