"""Turning one raw record into a document's text: the rule every source kind shares.

A raw record is UTF-8 bytes or text (a line, an ArrayRecord record, a Parquet cell), a mapping (a
TFDS example, an element of a JSON list) or None (a null Parquet cell). A record that cannot become
text raises ``BadRecord``; the pipeline counts it and goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

Decode = Callable[[bytes], str]


class BadRecord(Exception):
    """A record that cannot become text (not JSON, missing field, not a string); counted and skipped."""

    def __init__(self, rule: str, detail: str):
        super().__init__(detail)
        self.rule = rule


class RecordParser:
    """Named records with their parsing rule: ``field`` names the text in JSON / mapping records;
    with ``json_records`` a bytes or text record is a JSON object, else it is the text itself."""

    def __init__(self, name: str, *, field: str | None = None, json_records: bool = False):
        self.name = name
        self._field = field
        self._json = json_records

    def parse(self, raw: Any, decode: Decode) -> str:
        """Text of one raw record; ``decode(bytes) -> str`` counts invalid UTF-8."""
        if isinstance(raw, Mapping):
            return self._field_text(raw, decode)
        if isinstance(raw, (bytes, str)):
            text = decode(raw) if isinstance(raw, bytes) else raw
            if not self._json:
                return text
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise BadRecord("bad_json", f"not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise BadRecord("missing_field", f"no string field {self._field!r} (a JSON "
                                f"{type(record).__name__}, not an object)")
            return self._field_text(record, decode)
        if raw is None:
            raise BadRecord("missing_field", f"no string field {self._field!r} (null)")
        raise BadRecord("missing_field", f"no string field {self._field!r} (a "
                        f"{type(raw).__name__} record)")

    def _field_text(self, record: Mapping[str, Any], decode: Decode) -> str:
        value = record.get(self._field)
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return decode(value)
        detail = "missing" if value is None else f"a {type(value).__name__}"
        raise BadRecord("missing_field", f"no string field {self._field!r} ({detail})")

    def where(self, location: Any) -> str:
        """Human-readable location of a record (file:line where known)."""
        return f"{self.name} record {location}"
