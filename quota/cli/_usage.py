"""`quota check|record|usage|top`: the gate from the command line."""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from quota.cli._common import console, gate, json_option, print_json
from quota.cli._common import table as make_table
from quota.models import Decision, Status
from quota.ratelimits import duration
from quota.tables import compact, fits

_STYLE = {"ok": "green", "soft": "yellow", "hard": "red"}


@click.command()
@click.argument("port")
@click.option("--estimate", type=int, required=True, help="Tokens the call may spend.")
@json_option
def check(port: str, estimate: int, as_json: bool) -> int:
    """May PORT spend about ESTIMATE tokens? Exit 0 if allowed, 1 if refused."""
    with gate() as g:
        d = g.check(port, estimated_tokens=estimate)
    if as_json:
        print_json(d)
    elif d.degraded:
        verdict = "[yellow]allowed[/]" if d.ok else "[red]refused[/]"
        console().print(f"{verdict} by the outage policy: Redis cannot be reached")
    elif d.ok:
        left = "no cap" if d.remaining is None else f"{d.remaining:,} tokens left"
        soft = " (above the soft cap)" if d.soft_cap else ""
        console().print(f"[green]allowed[/]: {d.used_tokens:,} used, {left}{soft}")
    elif d.retry_after_ms is not None:
        console().print(f"[red]refused[/] ({d.reason}): ask again in {duration(d.retry_after_ms)}")
    else:
        console().print(
            f"[red]refused[/] ({d.reason}): {d.used_tokens:,} of "
            f"{d.cap_tokens:,} tokens used this {d.period}"
        )
    if d.rate and not as_json:
        console().print(rate_table(d))
    return 0 if d.ok else 1


def rate_table(d: Decision) -> Table:
    """Each rate limit's headroom, as a decision left it."""
    table = make_table("Rate limits", "limit", "left now", "full again in",
                       right=["left now", "full again in"])  # fmt: skip
    for s in d.rate:
        table.add_row(
            f"{s.limit:,} {s.kind} / {s.per_seconds:,} s", f"{s.remaining:,}", duration(s.reset_ms)
        )
    return table


@click.command()
@click.argument("port")
@click.option("--feature", required=True)
@click.option("--provider", required=True)
@click.option("--model", required=True)
@click.option("--input", "input_tokens", type=int, required=True, help="Input tokens.")
@click.option("--output", "output_tokens", type=int, required=True, help="Output tokens.")
@click.option("--request-id", help="Idempotency key: a retried record counts once.")
@click.option("--user", "user_id", help="The end user, if any.")
@json_option
def record(
    port: str,
    feature: str,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    request_id: str | None,
    user_id: str | None,
    as_json: bool,
) -> int:
    """Record usage for PORT. Exit 0 if stored (or already counted), 1 if not stored."""
    with gate() as g:
        result = g.record(
            port_id=port,
            feature=feature,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=request_id,
            user_id=user_id,
        )
    if as_json:
        print_json(result)
    elif result.duplicate:
        console().print(f"already counted (request id {request_id})")
    elif result.stored:
        used = "" if result.used_tokens is None else f"; {result.used_tokens:,} used this period"
        console().print(f"recorded {result.total_tokens:,} tokens in {result.backend}{used}")
    else:
        console().print(
            "[red]NOT stored[/]: Redis and Postgres are both unreachable "
            "(the event was logged in full)"
        )
    return 0 if result.stored else 1


def usage_bar(s: Status, width: int = 40) -> Text:
    """Used tokens against the hard cap, with the soft cap marked by a bar."""
    bar = Text()
    if not s.enabled or s.hard_cap_tokens == 0:
        return Text("no cap" if not s.enabled else "hard cap is 0", style="dim")
    filled = min(width, round(width * s.used_tokens / s.hard_cap_tokens))
    soft_at = min(width - 1, round(width * s.soft_cap_tokens / s.hard_cap_tokens))
    for i in range(width):
        char = "│" if i == soft_at else ("█" if i < filled else "░")
        bar.append(char, style=_STYLE[s.state] if i < filled else "dim")
    bar.append(f" {s.used_tokens / s.hard_cap_tokens:.0%}")
    return bar


@click.command()
@click.argument("port")
@json_option
def usage(port: str, as_json: bool) -> None:
    """PORT's usage this period against its caps, and the per-feature breakdown."""
    with gate() as g:
        s = g.status(port)
        features = g.breakdown(port)
        rates = g.check(port, 0)  # consumes nothing: the buckets' headroom
        caps = g.get_budget(port).feature_caps
        capped = {f: g.current_period_tokens(port, f) for f in sorted(caps)}
    if as_json:
        print_json(
            {
                "status": s,
                "breakdown": features,
                "rate_limits": rates.rate,
                "feature_caps": [
                    {"feature": f, "used_tokens": capped[f], "cap_tokens": caps[f]} for f in capped
                ],
            }
        )
        return
    out = console()
    out.print(
        f"[bold]{port}[/] · {s.period} from {s.period_start:%Y-%m-%d %H:%M} UTC, "
        f"resets {s.resets_at:%Y-%m-%d %H:%M} UTC · "
        f"[{_STYLE[s.state]}]{s.state}[/]"
    )
    out.print(usage_bar(s))
    out.print(
        f"used {s.used_tokens:,} · held by reservations {s.reserved_tokens:,} · "
        f"soft cap {s.soft_cap_tokens:,} · hard cap {s.hard_cap_tokens:,}"
        + ("" if s.enabled else " (budget disabled)")
    )
    if not features:
        out.print(f"By feature: nothing in the ledger this {s.period} yet (see quota status)")
    else:
        table = make_table("By feature (Postgres ledger)", "feature", "tokens", "calls", "share",
                           right=["tokens", "calls", "share"])  # fmt: skip
        total = sum(f.tokens for f in features) or 1
        for f in features:
            table.add_row(f.feature, f"{f.tokens:,}", f"{f.calls:,}", f"{f.tokens / total:.0%}")
        out.print(table)
    if rates.rate:
        out.print(rate_table(rates))
    if capped:
        cap_table = make_table("Feature caps (this period, Redis)", "feature", "used", "cap",
                               "left", right=["used", "cap", "left"])  # fmt: skip
        for feature, used in capped.items():
            cap = caps[feature]
            cap_table.add_row(feature, f"{used:,}", f"{cap:,}", f"{max(cap - used, 0):,}")
        out.print(cap_table)


@click.command()
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def top(limit: int, as_json: bool) -> None:
    """The ports with enabled budgets closest to their hard caps."""
    with gate() as g:
        statuses = [g.status(p) for p in g.store.ports_with_budgets(enabled_only=True)]
    statuses.sort(key=lambda s: (-(s.used_tokens / max(s.hard_cap_tokens, 1)), s.port_id))
    statuses = statuses[:limit]
    if as_json:
        print_json(statuses)
        return
    table = make_table("Closest to their hard caps", "port", "period", "used", "hard cap",
                       "usage", "state", right=["used", "hard cap"])  # fmt: skip
    for s in statuses:
        table.add_row(
            s.port_id,
            s.period,
            compact(s.used_tokens),
            compact(s.hard_cap_tokens),
            usage_bar(s, 10),
            Text(s.state, style=_STYLE[s.state]),
        )
    out = console()
    if fits(out, table):
        out.print(table)
        return
    # Port names too long for a row: a block per port (--json has every figure).
    out.print("[bold]Closest to their hard caps[/]")
    for s in statuses:
        out.print(f"[bold]{s.port_id}[/]", highlight=False)
        out.print(
            Text.assemble(
                f"  {s.period}  {compact(s.used_tokens)} of {compact(s.hard_cap_tokens)}  ",
                usage_bar(s, 10),
                "  ",
                Text(s.state, style=_STYLE[s.state]),
            )
        )
