"""`quota budget set|show|history`."""

from __future__ import annotations

import click
from rich.table import Table

from quota.cli._common import console, gate, json_option, print_json
from quota.models import Budget


def _budget_table(port: str, budget: Budget) -> Table:
    table = Table(title=f"Budget of {port}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_row("enabled", "yes" if budget.enabled else "no")
    table.add_row("soft cap", f"{budget.soft_cap_tokens:,} tokens")
    table.add_row("hard cap", f"{budget.hard_cap_tokens:,} tokens")
    table.add_row("period", budget.period)
    table.add_row("outage policy", budget.outage_policy or "default (QUOTA_OUTAGE_POLICY)")
    return table


@click.group()
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
@click.option("--by", "updated_by", required=True, help="Who is making the change.")
@json_option
def budget_set(
    port: str,
    enabled: bool | None,
    soft: int | None,
    hard: int | None,
    period: str | None,
    outage_policy: str | None,
    updated_by: str,
    as_json: bool,
) -> None:
    """Change PORT's budget; unspecified fields keep their stored values."""
    with gate() as g:
        result = g.set_budget(
            port,
            enabled=enabled,
            soft_cap_tokens=soft,
            hard_cap_tokens=hard,
            period=period,  # type: ignore[arg-type]
            outage_policy=outage_policy,  # type: ignore[arg-type]
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
    table = Table(title=f"Budget history of {port}", title_justify="left")
    for col in ("when (UTC)", "by", "enabled", "soft cap", "hard cap", "period"):
        table.add_column(col)

    def cell(before: object, after: object) -> str:
        shown = (
            f"{after:,}" if isinstance(after, int) and not isinstance(after, bool) else str(after)
        )
        return shown if before is None or before == after else f"[bold]{shown}[/]"

    for c in changes:
        b = c.before.model_dump() if c.before else {}
        a = c.after.model_dump()
        table.add_row(
            f"{c.changed_at:%Y-%m-%d %H:%M:%S}",
            c.changed_by,
            *(
                cell(b.get(k), a[k])
                for k in ("enabled", "soft_cap_tokens", "hard_cap_tokens", "period")
            ),
        )
    console().print(table)
