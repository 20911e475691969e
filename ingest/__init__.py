"""Everything that brings events in; knows nothing of stages or ClickHouse. What lives where:

- ``collector/``   the HTTP collector (aiohttp): ``app.py`` routes and answers, ``security.py``
  keys and vendor signatures, ``publisher.py`` the durable hand-off to Kafka, ``records.py``
  what goes on the topic, ``server.py`` connection limits and shutdown, ``openapi.py``
- ``webhooks/``    vendor payload → Touchpoint, one pure module per source: an email webhook
  becomes a Touchpoint in ``sendgrid.py`` (or ``mailgun.py``); ``twilio.py`` SMS,
  ``zendesk.py`` support, ``ads.py`` ads, ``segment.py`` tracking, ``native.py`` our own API
- ``reader.py``    JSONL/CSV files (gzipped too), one raw record per line; ``ordering.py``
  puts a bounded input in event-time order (external merge sort)
- ``kafka.py``     the Touchpoint producer (kafka-python); ``topics.py`` creates the topics
- ``generator.py`` seeded synthetic journeys with their ground truth
- ``ads_csv.py``, ``crm_csv.py`` (via ``csv_export.py``): ad-spend and CRM exports
"""
