"""tt-scale-flux's search loop as one process, for bench_cli.py to time from start to exit (imports and
model load included), beside `ttsf run` doing the same search.

What its main()/sample() do (github.com/sayakpaul/tt-scale-flux, main.py and verifiers/gemini_verifier.py;
the same loop as bench_search.py's in-process baseline):
  - load the pipeline with DiffusionPipeline.from_pretrained(...).to(device);
  - for each search round (outer), for each prompt (inner): draw the round's 2**r noises, generate one
    image per pipeline call (its default batch_size_for_img_gen=1) with the prompt TEXT (the text
    encoders run again for every image), save each PNG; then grade the round's images, one request
    each, on a pool of min(4, n) threads (its GeminiVerifier), and wait for all of them; keep the first
    best by the metric and write the round's JSON datapoint and best image.
The noises are the ones ttsf's random search draws (same seeds, same latents: ttsf_core.noise), and
the grades come from the same stand-in Gemini through the same client (ttsf's GeminiVerifier.score_one,
one image a request), so both processes must pick the same seed in every (prompt, round): it prints
the picks as JSON on its last stdout line.

    python benchmarks/_tt_scale_flux_loop.py --model DIR --prompts-file P.txt --rounds 3 \
        --base-url http://127.0.0.1:PORT --out DIR [--height 128 --width 128 --steps 4 --max-sequence-length 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VERIFIER_THREADS = 4  # tt-scale-flux's GeminiVerifier: ThreadPoolExecutor(max_workers=4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a diffusers pipeline folder (the tiny FLUX)")
    parser.add_argument("--prompts-file", required=True, help="one prompt a line")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-url", required=True, help="the stand-in Gemini")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0, help="ttsf's base seed (the noises random search draws)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance-scale", type=float, default=3.5)
    parser.add_argument("--max-sequence-length", type=int, default=64)
    parser.add_argument("--metric", default="overall_score")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from diffusers import DiffusionPipeline

    from ttsf_core.config import VerifierArgs
    from ttsf_core.noise import draw_latents, round_seeds
    from ttsf_core.verifiers.gemini import GeminiVerifier

    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts = [line for line in Path(args.prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    picks = {}
    with GeminiVerifier(VerifierArgs(name="gemini", options={"base_url": args.base_url})) as verifier:
        for search_round in range(1, args.rounds + 1):
            for prompt_index, prompt in enumerate(prompts):
                seeds = round_seeds(args.seed, prompt, search_round, 2**search_round)
                latents = draw_latents(pipe, seeds, args.height, args.width)
                images = []
                for index, seed in enumerate(seeds):
                    image = pipe(prompt=[prompt], latents=latents[index:index + 1], height=args.height,
                                 width=args.width, guidance_scale=args.guidance_scale,
                                 num_inference_steps=args.steps, max_sequence_length=args.max_sequence_length,
                                 output_type="pil").images[0]
                    image.save(out / f"p{prompt_index}_r{search_round}_i{index}_s{seed}.png")
                    images.append(image)
                with ThreadPoolExecutor(max_workers=min(VERIFIER_THREADS, len(images))) as pool:
                    grades = list(pool.map(lambda image: verifier.score_one(prompt, image), images))
                scores = [grade.score(args.metric) for grade in grades]
                best = max(range(len(scores)), key=lambda index: scores[index])  # the first of equals
                images[best].save(out / f"p{prompt_index}_r{search_round}_best.png")
                (out / f"p{prompt_index}_r{search_round}.json").write_text(json.dumps({
                    "prompt": prompt, "search_round": search_round, "num_noises": len(seeds),
                    "best_noise_seed": seeds[best], "best_score": scores[best], "choice_of_metric": args.metric,
                    "best_img_path": str(out / f"p{prompt_index}_r{search_round}_best.png")}, indent=4))
                picks[f"{prompt_index}/{search_round}"] = seeds[best]
    print(json.dumps(picks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
