"""The journey logic as pure functions, and its two drivers. What lives where:

- ``classify.py``     load a rules file and classify a touchpoint with it
- ``journey.py``      the fold: dedup, stage hits, exits, drop-off timers, the rows it emits
- ``triggers.py``     which real-time triggers fire, over the same journey state
- ``identity.py``     identity stitching: which ids are one person, and who that person is
- ``journey_processor.py``  ``JourneyProcessor``: dedup → classify → fold → timers over a
  batch, for any state store (``state_stores.py``: memory, RocksDB)
- ``partitions.py``   the worker's partitions, pure: what it owns and what a batch sends
- ``local.py``        driver 1: the local runner, in one process (the embedded path)
- ``faust_app.py``    driver 2: the Faust worker over Kafka (the distributed path)
- ``metrics.py``      worker metrics (a factory taking a registry)
- ``default_rules.toml``  the rules used when none are given

No module here imports ``clickhouse_connect``; both drivers call the same processor.
"""
