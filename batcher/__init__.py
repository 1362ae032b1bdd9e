"""The batched PostgreSQL writer: buffer, flush, retry, drain and recovery. Knows no HTTP."""

from .buffer import Buffer, BufferFull
from .records import IssueRecord
from .writer import Writer, create_pool

__all__ = ["Buffer", "BufferFull", "IssueRecord", "Writer", "create_pool"]
