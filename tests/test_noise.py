import torch

from ttsf_core.noise import candidate_seed, draw_latents, latent_channels, round_seeds


def test_seed_depends_on_every_input_and_nothing_else():
    seed = candidate_seed(0, "a cat", 1, 0)
    assert seed == candidate_seed(0, "a cat", 1, 0)
    others = {candidate_seed(1, "a cat", 1, 0), candidate_seed(0, "a dog", 1, 0),
              candidate_seed(0, "a cat", 2, 0), candidate_seed(0, "a cat", 1, 1)}
    assert seed not in others and len(others) == 4
    assert 0 <= seed < 2**63


def test_round_seeds_are_distinct_and_sized_by_pool():
    seeds = round_seeds(7, "p", 3, 8)
    assert len(seeds) == 8 and len(set(seeds)) == 8


def test_latent_shape_comes_from_the_loaded_model_config(tiny_pipe):
    channels = latent_channels(tiny_pipe)
    assert channels == tiny_pipe.transformer.config.in_channels // 4
    latents = draw_latents(tiny_pipe, [1, 2], 128, 64)
    scale = tiny_pipe.vae_scale_factor * 2  # 2x2 packing on top of the VAE downscale
    assert latents.shape == (2, (128 // scale) * (64 // scale), channels * 4)
    assert latents.dtype == torch.float32 and latents.device.type == "cpu"


def test_each_seed_draws_the_same_noise_alone_or_in_a_batch(tiny_pipe):
    together = draw_latents(tiny_pipe, [11, 22, 33], 64, 64)
    alone = torch.cat([draw_latents(tiny_pipe, [seed], 64, 64) for seed in (11, 22, 33)])
    assert torch.equal(together, alone)
    assert not torch.equal(together[0], together[1])
