"""The thin entry point: the ``touchpoint`` command and settings wiring. What lives where:

- ``cli.py``         the command line: each subcommand parses its options and calls into a room;
  ``options.py`` the option blocks commands share, ``console.py`` progress bars and summaries
- the wiring, settings → objects, one module per thing wired: ``config.py`` (settings, rules,
  the processor, a ClickHouse client), ``embedded.py`` (file runs, resumed from the stored
  journeys), ``identity.py`` (identity split), ``replay.py`` (dead-letter replay),
  ``demo.py``, ``kafka.py`` (topics, producing, the worker, the sink), ``webhooks.py``,
  ``collector.py``, ``imports.py`` (ads/CRM CSV), ``report.py``, ``sql.py``
  (``touchpoint sql``), ``serve.py`` (``touchpoint serve``); ``wiring.py`` re-exports the
  names they once shared (for bench/)
- ``monitoring.py``  the ``/metrics`` endpoint, build info, consumer-lag gauges
- ``__main__.py``    ``python -m touchpoint``

No journey logic lives here: it is in ``processors/``, data contracts in ``schemas/``.
"""

__all__: list[str] = []
