"""The query benchmark: the dashboard's read path over a month of data against plain SQL
(see bench/bench_query.py).

`main` runs it; `data` is the synthetic month's catalog and generator SQL, `load` loads it
through the production rollup SQL, `baselines` are the plain-SQL answers, `calls` the measured
and checked service calls, `explain` and `tail` the optional profile and live-tail latency,
`report` the goals and the text.
"""
