"""Filter: consumer-side selection of events by category, detail level and source kind.

Rules:
- A filter is judged from a slot's index fields alone (``accepts_slot``): the
  reader never copies or decodes an event it filters out, and never counts
  it as a drop.
- Bad values are a ConfigError at construction, never a silent no-match; an
  empty selection is refused (pass None to accept any).
"""

from collections.abc import Iterable

from .errors import ConfigError, ShmringError
from .layout import DETAIL_CODES, DETAIL_LEVELS, KIND_CODES, SOURCE_KINDS, category_field
from .schema import validate_category

__all__ = ["Filter"]


class Filter:
    """Consumer-side selection by category, detail level and source kind.

    Each argument is None (any value) or a collection of accepted values.
    Events that don't match are skipped without being decoded.
    """

    __slots__ = ("categories", "detail_levels", "source_kinds", "_category_fields", "_detail_codes", "_kind_codes")

    def __init__(
        self,
        categories: Iterable[str] | None = None,
        detail_levels: Iterable[str] | None = None,
        source_kinds: Iterable[str] | None = None,
    ):
        self.categories = _selector("categories", categories, validate_category)
        self.detail_levels = _selector("detail_levels", detail_levels, _enum_check("detail level", DETAIL_LEVELS))
        self.source_kinds = _selector("source_kinds", source_kinds, _enum_check("source kind", SOURCE_KINDS))
        self._category_fields = None if self.categories is None else frozenset(map(category_field, self.categories))
        self._detail_codes = (
            None if self.detail_levels is None else frozenset(DETAIL_CODES[d] for d in self.detail_levels)
        )
        self._kind_codes = None if self.source_kinds is None else frozenset(KIND_CODES[k] for k in self.source_kinds)

    @property
    def kind_codes(self) -> frozenset[int] | None:
        """The accepted source kinds as the slot stores them (None: any)."""
        return self._kind_codes

    @property
    def detail_codes(self) -> frozenset[int] | None:
        """The accepted detail levels as the slot stores them (None: any)."""
        return self._detail_codes

    @property
    def category_fields(self) -> frozenset[bytes] | None:
        """The accepted categories as the slot stores them, NUL-padded to 32 bytes (None: any)."""
        return self._category_fields

    def accepts_slot(self, kind: int, detail: int, category: bytes) -> bool:
        return (
            (self._kind_codes is None or kind in self._kind_codes)
            and (self._detail_codes is None or detail in self._detail_codes)
            and (self._category_fields is None or category in self._category_fields)
        )

    def __repr__(self) -> str:
        parts = [
            f"{k}={sorted(v)!r}"
            for k, v in (("categories", self.categories), ("detail_levels", self.detail_levels),
                         ("source_kinds", self.source_kinds))
            if v is not None
        ]
        return f"Filter({', '.join(parts)})"


def _enum_check(what: str, allowed: tuple[str, ...]):
    def check(value: object) -> str:
        if value not in allowed:
            raise ConfigError(f"invalid {what} {value!r} in filter: use one of {', '.join(allowed)}")
        return value

    return check


def _selector(name: str, values, check) -> frozenset | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    try:
        checked = frozenset(check(v) for v in values)
    except ShmringError as exc:
        raise ConfigError(str(exc)) from None
    if not checked:
        raise ConfigError(f"Filter {name} is empty, which matches nothing; pass None to accept any")
    return checked
