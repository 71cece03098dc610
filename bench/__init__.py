"""Benchmarks of i2v: ingest speed, callback lag, requests in flight per machine, and sizing.

``python -m bench`` (or ``make bench``) runs every part and writes ``bench/RESULTS.md``; see
``python -m bench --help`` for ``--only`` and ``--quick``. These are measurements, not tests: a
missed target is reported with its gap, never turned into a failure exit.
"""
