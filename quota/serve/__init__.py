"""`quota serve`: the HTTP API and the read-only dashboard (an optional extra:
``pip install 'quota[serve]'``). ``uvicorn --factory quota.serve:create_app`` embeds it."""

from quota.serve.app import create_app

__all__ = ["create_app"]
