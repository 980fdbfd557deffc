"""The benchmarks' code, kept out of the entry scripts so each piece has one job and a name.

`bench/bench_ingest.py` and `bench/bench_query.py` only describe their benchmark (the text is
their `--help`) and call `benchlib.ingest.main` or `benchlib.query.main`. The modules at this
level are what both benchmarks need; `ingest/` and `query/` hold what only one of them does.
The scripts run as plain files, so `bench/` is on `sys.path` and this package imports as
`benchlib`; inside it, imports are relative.
"""
