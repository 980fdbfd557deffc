"""The ingest benchmark: gRPC write path end to end against raw COPY (see bench/bench_ingest.py).

`main` runs it; `records` prepares the workload, `client` sends it from its own process,
`cpu` accounts the processes' CPU, `database` checks and resets the tables, `e2e` is
measurement (a), `reference` the references (b) and (c), `report` the goals and the text.
"""
