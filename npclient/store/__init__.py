"""The local mirror: one DuckDB file (schema, connection scheme, batched writes, reads)."""

from .database import Database
from .schema import SCHEMA_VERSION
from .writer import PARTS, FailureRow, FeatureRow, feature_key, write_batch

__all__ = ["Database", "SCHEMA_VERSION", "PARTS", "FailureRow", "FeatureRow", "feature_key", "write_batch"]
