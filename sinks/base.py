"""The sink interface every writer implements: ``write(batch)``, ``flush()``, ``close()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from schemas.rows import Row

__all__ = ["RowBatch", "Sink"]


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows for several tables that belong together.

    ``token`` identifies the batch deterministically (input and position range):
    writing the same batch twice must leave the tables as if written once. A table's
    rows are either all encoded (one JSON object per row, the hot path) or all typed.
    """

    token: str
    tables: Mapping[str, Sequence[Row] | Sequence[bytes]]

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables.values())


class Sink(ABC):
    """Where processed rows go. A batch is kept by the sink until it is written."""

    @abstractmethod
    def write(self, batch: RowBatch) -> None:
        """Accept a batch; raises :class:`schemas.errors.SinkError` if it cannot be kept."""

    @abstractmethod
    def flush(self) -> None:
        """Make every accepted batch durable."""

    @abstractmethod
    def close(self) -> None:
        """Flush, then release resources."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
