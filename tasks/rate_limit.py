"""The verifier's requests-per-minute budget, shared by every batch and worker through one Prefect
global concurrency limit (created here when missing: an uncreated limit would not block)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound

from ttsf_core.config import RunConfig


def rpm_limit_name(config: RunConfig) -> str | None:
    if config.verifier_rpm is None:
        return None
    return f"ttsf-verifier-{config.verifier_args.name}-rpm"


def rpm_burst(rpm: int) -> int:
    """The most requests the limit lets through at once: a tenth of a minute's budget."""
    return max(1, rpm // 10)


def ensure_rpm_limit(config: RunConfig) -> str | None:
    """Create or update the limit so it allows `verifier_rpm` requests a minute; return its name."""
    name = rpm_limit_name(config)
    if name is None:
        return None
    rpm = config.verifier_rpm
    # A burst of at most a tenth of a minute's budget, refilled continuously at rpm/60 a second.
    slots = rpm_burst(rpm)
    decay = rpm / 60.0
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=slots, slot_decay_per_second=decay, active=True)
            )
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots, slot_decay_per_second=decay, active=True)
            )
    return name


def rpm_description(config: RunConfig) -> str:
    """The verifier budget in the terms the user set it."""
    name = rpm_limit_name(config)
    if name is None:
        return f"no requests-per-minute cap on {config.verifier_args.name} (set --verifier_rpm to share one)"
    rpm = config.verifier_rpm
    return (f"{rpm} {config.verifier_args.name} requests a minute, shared by every batch and worker (Prefect "
            f"global concurrency limit `{name}`: bursts of up to {rpm_burst(rpm)}, refilled at "
            f"{rpm / 60:.2f} a second)")
