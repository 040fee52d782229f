"""Table schemas (roadmap 1.3), checked on every write.

A schema names the fields a document of that table may carry, their JSON
types, and which of them are required. Fields a schema does not name are
allowed (newer writers may add them) but must still be JSON values. The store
stamps ``created_at`` / ``updated_at`` itself, so schemas need not list them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# JSON type names -> Python types accepted for them.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
    "any": (object,),
}


class SchemaError(ValueError):
    """A document does not fit its table's schema; the message names table and field."""


class UnknownTableError(KeyError):
    """The table is not one of the store's tables."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown table"


@dataclass(frozen=True)
class Field:
    type: str
    required: bool = False
    nullable: bool = False
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TableSchema:
    name: str
    fields: dict[str, Field] = field(default_factory=dict)

    def validate(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise SchemaError(
                f"table {self.name!r}: a document must be a mapping, got {type(doc).__name__}"
            )
        for key in doc:
            if not isinstance(key, str):
                raise SchemaError(f"table {self.name!r}: field names must be strings, got {key!r}")
        for name, spec in self.fields.items():
            if name not in doc:
                if spec.required:
                    raise SchemaError(f"table {self.name!r}: field {name!r} is required")
                continue
            value = doc[name]
            if value is None:
                if spec.nullable or not spec.required and spec.type == "any":
                    continue
                if not spec.nullable:
                    raise SchemaError(f"table {self.name!r}: field {name!r} must not be null")
            allowed = _TYPES[spec.type]
            # bool is an int subclass in Python; JSON keeps them apart, so do we.
            if spec.type in ("int", "number") and isinstance(value, bool):
                raise SchemaError(
                    f"table {self.name!r}: field {name!r} must be {spec.type}, got bool"
                )
            if not isinstance(value, allowed):
                raise SchemaError(
                    f"table {self.name!r}: field {name!r} must be {spec.type}, "
                    f"got {type(value).__name__}"
                )
            if spec.choices is not None and value not in spec.choices:
                raise SchemaError(
                    f"table {self.name!r}: field {name!r} must be one of "
                    f"{', '.join(map(str, spec.choices))}; got {value!r}"
                )


def _s(table: str, /, **fields: Field) -> TableSchema:
    return TableSchema(table, dict(fields))


STR, INT, NUM, BOOL, DICT, LIST = "str", "int", "number", "bool", "dict", "list"

QUEUE_STATUSES = ("pending", "processing", "completed", "failed", "interrupted", "cancelled")

DEFAULT_SCHEMAS: dict[str, TableSchema] = {
    s.name: s
    for s in (
        _s(
            "servers",
            address=Field(STR, required=True),
            healthy=Field(BOOL),
            load=Field(NUM, nullable=True),
            last_check=Field(STR, nullable=True),
            first_seen=Field(STR, nullable=True),
            hardware_info=Field(DICT, nullable=True),
        ),
        _s(
            "models",
            name=Field(STR, required=True),
            servers=Field(LIST),
            size_gb=Field(NUM, nullable=True),
            parameter_count=Field(STR, nullable=True),
            quantization=Field(STR, nullable=True),
            first_seen=Field(STR, nullable=True),
            last_used=Field(STR, nullable=True),
            usage_count=Field(INT),
        ),
        _s(
            "server_stats",
            server=Field(STR, required=True),
            timestamp=Field(STR, required=True),
            type=Field(STR, required=True, choices=("health", "load", "latency", "slots",
                                                    "gpu_util", "gpu_memory")),
            value=Field(NUM, required=True),
        ),
        _s(
            "request_stats",
            timestamp=Field(STR, required=True),
            period=Field(STR, required=True, choices=("hourly", "daily", "weekly")),
            total_requests=Field(INT),
            generate_requests=Field(INT),
            chat_requests=Field(INT),
            embedding_requests=Field(INT),
            average_latency_ms=Field(NUM, nullable=True),
        ),
        _s(
            "config",
            key=Field(STR, required=True),
            value=Field("any", required=True, nullable=True),
        ),
        _s(
            "inference_queue",
            id=Field(STR, required=True),
            model=Field(STR, required=True),
            prompt=Field(STR, nullable=True),
            status=Field(STR, required=True, choices=QUEUE_STATUSES),
            priority=Field(INT),
            started_at=Field(STR, nullable=True),
            completed_at=Field(STR, nullable=True),
            server_assigned=Field(STR, nullable=True),
            batch_id=Field(STR, nullable=True),
        ),
    )
}
