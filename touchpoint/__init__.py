"""The thin entry point: the ``touchpoint`` command and settings wiring. What lives where:

- ``cli.py``         the command line: each subcommand parses its options and calls into a room
- ``wiring.py``      settings → objects: rules, ClickHouse clients, runs, the generator
- ``monitoring.py``  the ``/metrics`` endpoint, build info, consumer-lag gauges
- ``__main__.py``    ``python -m touchpoint``

No journey logic lives here: it is in ``processors/``, data contracts in ``schemas/``.
"""

__all__: list[str] = []
