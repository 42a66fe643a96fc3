"""What `ttsf run` does once its config is valid: run, show progress, print where results are."""

from __future__ import annotations

import click
from tqdm import tqdm

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.records import RoundRecord
from ttsf_core.verifiers.base import RetryableVerifierError, VerifierConfigError, VerifierError


def run_and_print(config: RunConfig) -> None:
    from ttsf_core.cli import fail
    from ttsf_core import runner

    try:
        prepared = runner.prepare_run(config)
    except (ConfigError, VerifierConfigError) as error:
        fail(str(error))
    total = len(prepared.prompts) * sum(
        config.search_args.pool_size(r) for r in range(1, config.search_args.search_rounds + 1)
    )
    from ttsf_core.generate import CandidateGenerator
    from ttsf_core.pipelines import load_pipeline

    with tqdm(total=total, unit="candidate", desc="search", dynamic_ncols=True) as bar:
        try:
            generator = CandidateGenerator(load_pipeline(config), config)
            records = runner.run_search(prepared, generator, on_candidates=bar.update)
        except (VerifierError, RetryableVerifierError) as error:
            bar.close()
            fail(f"{type(error).__name__}: {error}; finished rounds and images are kept: "
                 "run the same command again to resume", code=1)
    _print_summary(records)
    click.echo(f"Output: {prepared.layout.run_dir}")


def _print_summary(records: list[RoundRecord]) -> None:
    for record in records:
        click.echo(
            f"prompt {record.prompt_index} round {record.search_round}: {record.num_noises} noises, "
            f"best {record.choice_of_metric}={record.best_score:g} (seed {record.best_noise_seed})"
        )
