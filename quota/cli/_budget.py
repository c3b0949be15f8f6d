"""`quota budget set|show|history`."""

from __future__ import annotations

import re
from typing import Any

import click
from rich.table import Table

from quota.cli._common import WholeHelpGroup, console, gate, json_option, print_json
from quota.cli._common import table as make_table
from quota.models import Budget, RateLimit

_RATE = re.compile(r"(requests|tokens)=(\d+)/(\d+)(?:\+(\d+))?")


def rate_text(r: RateLimit) -> str:
    burst = "" if r.burst is None else f" (burst {r.burst:,})"
    return f"{r.limit:,} {r.kind} / {r.per_seconds:,} s{burst}"


def _rate(value: str) -> RateLimit:
    m = _RATE.fullmatch(value)
    if m is None:
        raise click.BadParameter(
            f"{value!r}: give requests=N/SECONDS or tokens=N/SECONDS, optionally +BURST"
        )
    kind, n, per, burst = m.groups()
    return RateLimit(**{kind: int(n)}, per_seconds=int(per),
                     burst=None if burst is None else int(burst))  # fmt: skip


def _cap(value: str) -> tuple[str, int | None]:
    feature, sep, tokens = value.partition("=")
    if not sep or not feature or not (tokens.isdigit() or tokens == "none"):
        raise click.BadParameter(f"{value!r}: give FEATURE=TOKENS, or FEATURE=none to remove")
    return feature, None if tokens == "none" else int(tokens)


def _budget_table(port: str, budget: Budget) -> Table:
    table = make_table(f"Budget of {port}", "field", "value", right=["value"], header=False)
    table.add_row("enabled", "yes" if budget.enabled else "no")
    table.add_row("soft cap", f"{budget.soft_cap_tokens:,} tokens")
    table.add_row("hard cap", f"{budget.hard_cap_tokens:,} tokens")
    table.add_row("period", budget.period)
    table.add_row("outage policy", budget.outage_policy or "default (QUOTA_OUTAGE_POLICY)")
    for r in budget.rate_limits:
        table.add_row("rate limit", rate_text(r))
    for feature, cap in sorted(budget.feature_caps.items()):
        table.add_row(f"cap of {feature}", f"{cap:,} tokens")
    return table


_LABELS = {
    "enabled": "enabled",
    "soft_cap_tokens": "soft cap",
    "hard_cap_tokens": "hard cap",
    "period": "period",
    "outage_policy": "outage policy",
    "rate_limits": "rate limits",
    "feature_caps": "feature caps",
}


def _shown(field: str, value: Any) -> str:
    if field == "rate_limits":
        return ", ".join(rate_text(RateLimit(**r)) for r in value) or "none"
    if field == "feature_caps":
        return ", ".join(f"{f} {c:,}" for f, c in sorted(value.items())) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return "default" if value is None else str(value)


@click.group(cls=WholeHelpGroup)
def budget() -> None:
    """Set and inspect a port's budget."""


@budget.command("set")
@click.argument("port")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the caps on or off.")
@click.option("--soft", type=int, help="Soft cap in tokens (warn, allow).")
@click.option("--hard", type=int, help="Hard cap in tokens (refuse).")
@click.option("--period", type=click.Choice(["day", "week", "month"]))
@click.option(
    "--outage-policy",
    type=click.Choice(["closed", "open", "allowance"]),
    help="What decisions answer while Redis is down (default: QUOTA_OUTAGE_POLICY).",
)
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute (a rate limit).")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute (a rate limit).")
@click.option(
    "--rate",
    "rates",
    multiple=True,
    help="A rate limit: requests=N/SECONDS or tokens=N/SECONDS, optionally +BURST "
    "(repeatable; replaces the limit of the same kind and window).",
)
@click.option("--no-rate-limits", is_flag=True, help="Remove every rate limit first.")
@click.option(
    "--feature-cap",
    "caps",
    multiple=True,
    help="FEATURE=TOKENS: a hard cap of one feature per period (repeatable; "
    "FEATURE=none removes it).",
)
@click.option("--no-feature-caps", is_flag=True, help="Remove every feature cap first.")
@click.option("--by", "updated_by", required=True, help="Who is making the change.")
@json_option
def budget_set(
    port: str,
    enabled: bool | None,
    soft: int | None,
    hard: int | None,
    period: str | None,
    outage_policy: str | None,
    rpm: int | None,
    tpm: int | None,
    rates: tuple[str, ...],
    no_rate_limits: bool,
    caps: tuple[str, ...],
    no_feature_caps: bool,
    updated_by: str,
    as_json: bool,
) -> None:
    """Change PORT's budget; unspecified fields keep their stored values. Rate limits
    and feature caps given are merged into the stored ones."""
    new_limits = [_rate(r) for r in rates]
    if rpm is not None:
        new_limits.append(RateLimit(requests=rpm, per_seconds=60))
    if tpm is not None:
        new_limits.append(RateLimit(tokens=tpm, per_seconds=60))
    new_caps = dict(_cap(c) for c in caps)
    with gate() as g:
        limits: list[RateLimit] | None = None
        feature_caps: dict[str, int] | None = None
        if new_limits or no_rate_limits or new_caps or no_feature_caps:
            stored = g.get_budget(port)
            if new_limits or no_rate_limits:
                given = {(r.kind, r.per_seconds) for r in new_limits}
                kept = [] if no_rate_limits else stored.rate_limits
                limits = [r for r in kept if (r.kind, r.per_seconds) not in given] + new_limits
            if new_caps or no_feature_caps:
                merged = {} if no_feature_caps else dict(stored.feature_caps)
                merged.update(new_caps)  # type: ignore[arg-type]
                feature_caps = {f: c for f, c in merged.items() if c is not None}
        result = g.set_budget(
            port,
            enabled=enabled,
            soft_cap_tokens=soft,
            hard_cap_tokens=hard,
            period=period,  # type: ignore[arg-type]
            outage_policy=outage_policy,  # type: ignore[arg-type]
            rate_limits=limits,
            feature_caps=feature_caps,
            updated_by=updated_by,
        )
    if as_json:
        print_json({"port_id": port, **result.model_dump()})
    else:
        console().print(_budget_table(port, result))


@budget.command("show")
@click.argument("port")
@json_option
def budget_show(port: str, as_json: bool) -> None:
    """PORT's stored budget (the defaults if none was set)."""
    with gate() as g:
        result = g.get_budget(port)
    if as_json:
        print_json({"port_id": port, **result.model_dump()})
    else:
        console().print(_budget_table(port, result))


@budget.command("history")
@click.argument("port")
@json_option
def budget_history(port: str, as_json: bool) -> None:
    """Every change to PORT's budget: who, when, before and after."""
    with gate() as g:
        changes = g.budget_history(port)
    if as_json:
        print_json(changes)
        return
    out = console()
    out.print(f"[bold]Budget history of {port}[/] ({len(changes)} changes, oldest first)")
    for c in changes:
        # A block per change, a line per field: fits 80 columns however long a value.
        verb = "created" if c.before is None else "changed"
        out.print(f"{c.changed_at:%Y-%m-%d %H:%M:%S} UTC  {verb} by [bold]{c.changed_by}[/]")
        for name, before, after in c.fields_changed():
            label = _LABELS.get(name, name)
            if c.before is None:
                out.print(f"  {label}: {_shown(name, after)}", highlight=False)
            else:
                out.print(
                    f"  {label}: {_shown(name, before)} -> [bold]{_shown(name, after)}[/]",
                    highlight=False,
                )
