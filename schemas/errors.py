"""The one exception tree of Touchpoint.

Every error the project raises on purpose derives from :class:`TouchpointError`;
third-party exceptions are translated where they enter (``raise X(...) from exc``).
The CLI turns any ``TouchpointError`` into a one-line message and exit code 1.

::

    TouchpointError
    ├── ConfigError (ValueError)              settings, flags, missing files
    │   └── RulesError                        a journey rules file that does not validate
    ├── InputError                            an input source that cannot be read at all
    ├── SchemaValidationError (ValueError)    one record breaks the Touchpoint contract
    │   └── PayloadError                      a request body as a whole is unusable (HTTP 400)
    ├── BrokerError                           talking to Kafka failed
    │   ├── BrokerUnavailableError            no broker reachable (yet)
    │   └── DeliveryError                     a record was not acknowledged (acks=all)
    └── SinkError                             writing to ClickHouse failed
        ├── SinkRetryableError                worth another try (network, busy server)
        └── SinkFatalError                    retrying will not help (bad SQL, schema drift)
            └── MigrationError                a migration failed or was edited after it ran

A bad *record* is not an exception that stops anything: the processor turns a
``SchemaValidationError`` into a :class:`schemas.dead_letter.DeadLetter` row. The
Touchpoint model's own validators raise it too (pydantic wraps it in a
``ValidationError``; :func:`schemas.touchpoint.parse_touchpoint` unwraps its reason).
"""

from __future__ import annotations

from schemas.enums import DeadLetterReason

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "DeliveryError",
    "InputError",
    "MigrationError",
    "PayloadError",
    "RulesError",
    "SchemaValidationError",
    "SinkError",
    "SinkFatalError",
    "SinkRetryableError",
    "TouchpointError",
]


class TouchpointError(Exception):
    """Root of every error Touchpoint raises on purpose."""


class ConfigError(TouchpointError, ValueError):
    """A setting, flag or referenced file is wrong."""


class RulesError(ConfigError):
    """The journey rules file does not validate."""


class InputError(TouchpointError):
    """An input source cannot be opened or read."""


class SchemaValidationError(TouchpointError, ValueError):
    """One record does not satisfy the Touchpoint contract.

    ``reason`` is the machine-readable dead-letter reason, ``detail`` the
    human-readable explanation stored beside it.
    """

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class PayloadError(SchemaValidationError):
    """A request body as a whole is unusable (not JSON, wrong shape): the collector answers 400.

    Raised by the webhook adapters (:mod:`ingest.webhooks`); a single bad item in a usable
    body is a rejection, not this.
    """


class BrokerError(TouchpointError):
    """Talking to Kafka failed."""


class BrokerUnavailableError(BrokerError):
    """No Kafka broker could be reached."""


class DeliveryError(BrokerError):
    """Kafka did not acknowledge one or more records; nothing was silently dropped."""


class SinkError(TouchpointError):
    """Writing to ClickHouse failed."""


class SinkRetryableError(SinkError):
    """A write failed in a way that another attempt may fix."""


class SinkFatalError(SinkError):
    """A write failed in a way that retrying will not fix."""


class MigrationError(SinkFatalError):
    """A schema migration failed, or an applied migration was changed."""
