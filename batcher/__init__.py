"""The batched PostgreSQL writer: buffer, flush, retry, drain and recovery. Knows no HTTP."""

from .buffer import Buffer, BufferFull
from .records import IssueRecord
from .writer import Writer

__all__ = ["Buffer", "BufferFull", "IssueRecord", "Writer"]
