"""`python -m quota ...` is the `quota` command."""

from quota.cli import main

main()
