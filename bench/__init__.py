"""Benchmarks, not tests: each one reports its figures as ratios against a peer measured in
the same run. Run them as ``python -m bench.<name>`` (``--help`` for options); see
bench/README.md and docs/benchmarks.md. What lives where:

- ``common.py``      what they share: options, logging, the run (scratch directory, result
  JSON), a fresh Kafka broker, CPU meters, a quiet machine to time on, medians and ratios,
  the environment record
- ``embedded.py``    ``touchpoint run`` into chDB vs a plain insert of the same rows
- ``kafka_path.py``  produce → Faust workers → sink vs a raw aiokafka consumer (and
  ``quix_peer.py``: the same job in Quix Streams, ``--peer quix``)
- ``collector.py``   the HTTP collector on Kafka vs a bare aiohttp handler
- ``queries.py``     the report's queries on aggregates vs the same answers from raw tables
- ``state_size.py``  the stored size of a buyer's journey state
- ``results/``       where the JSON results go (ignored by git)
"""
