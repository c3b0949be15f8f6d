"""RQ jobs for quota (drain, reconcile) and the `rq cron` configuration.

Jobs are small functions importable by dotted path; each worker process opens its
own connections on first use (`quota.runtime`), never at import or enqueue time.
"""
