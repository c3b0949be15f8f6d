"""The `quota` command: a thin shell over the library.

Every option can also be set by a ``QUOTA_*`` variable: the global ones by their
settings names (``QUOTA_REDIS_URL``, ...), a command's own as ``QUOTA_<COMMAND>_<OPTION>``
(``QUOTA_CHECK_ESTIMATE``). Read commands take ``--json``. Bad input and backend
failures print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from pydantic import ValidationError

from quota._exceptions import QuotaError
from quota.cli import _budget, _ops, _serve, _shards, _usage
from quota.cli._common import WholeHelpGroup

#: Exit codes: 0 done (or allowed), 1 refused / unhealthy / not stored, 2 bad input or
#: backend failure.
EXIT_ERROR = 2


class _QuotaGroup(WholeHelpGroup):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("quota: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"quota: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except ValidationError as exc:  # a QUOTA_* setting out of range
            err = exc.errors()[0]
            click.echo(f"quota: setting {err['loc'][0]}: {err['msg']}", err=True)
            sys.exit(EXIT_ERROR)
        except QuotaError as exc:
            click.echo(f"quota: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    cls=_QuotaGroup,
    context_settings={"auto_envvar_prefix": "QUOTA", "help_option_names": ["-h", "--help"]},
    epilog='Shell completion: eval "$(_QUOTA_COMPLETE=bash_source quota)" (zsh_source, '
    "fish_source for those shells).",
)
@click.version_option(package_name="quota", prog_name="quota")
@click.option("--redis-url", envvar="QUOTA_REDIS_URL", help="Redis URL [QUOTA_REDIS_URL].")
@click.option(
    "--database-url", envvar="QUOTA_DATABASE_URL", help="Postgres URL [QUOTA_DATABASE_URL]."
)
@click.option(
    "--key-prefix", envvar="QUOTA_KEY_PREFIX", help="Prefix of every Redis key [QUOTA_KEY_PREFIX]."
)
def main(redis_url: str | None, database_url: str | None, key_prefix: str | None) -> None:
    """quota: atomic per-tenant LLM token budgets (Redis gate, Postgres ledger)."""
    # Warnings (a soft-cap alert, a fallback write) as one plain line each.
    logging.basicConfig(level=logging.WARNING, format="quota: %(levelname)s: %(message)s")
    # Written back to the environment so that every Settings() agrees, including those
    # of RQ jobs and of the processes the worker and the demo start.
    for name, value in (
        ("QUOTA_REDIS_URL", redis_url),
        ("QUOTA_DATABASE_URL", database_url),
        ("QUOTA_KEY_PREFIX", key_prefix),
    ):
        if value:
            os.environ[name] = value


main.add_command(_budget.budget)
for command in (_usage.check, _usage.record, _usage.usage, _usage.top):
    main.add_command(command)
for command in (
    _ops.db,
    _ops.worker,
    _ops.cron,
    _ops.drain,
    _ops.reconcile,
    _ops.status,
    _ops.health,
    _ops.demo,
    _shards.shards,
    _serve.serve,
):
    main.add_command(command)
