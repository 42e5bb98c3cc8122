"""A native producer's config: what it captures, apart from what any reader subscribes to.

Rules:
- One shape everywhere (CLI, control socket, HTTP edge, events):
  ``{"enabled": bool, "categories": [...], "detail_level": "minimal|standard|verbose|raw"}``.
  The categories are those the CDP producer emits: console, network, page,
  interaction. ``system`` events (the producer's lifecycle and config
  changes) are always emitted and are not a category here.
- A config is immutable and always valid: every way in (``ProducerConfig()``,
  ``from_dict``, ``patched``, ``parse_categories``) raises a one-line
  ``ConfigError`` for an unknown field, category or level.
- Categories are kept in the canonical order above, each once, so two equal
  configs compare (and encode) equal.
- Subscriptions (``Filter``, ``tail``, SSE queries) never build or change one
  of these: only the producer's own control surfaces do.
"""

from .errors import ConfigError
from .layout import DETAIL_LEVELS

__all__ = ["CATEGORIES", "ProducerConfig", "parse_categories"]

CATEGORIES = ("console", "network", "page", "interaction")
FIELDS = ("enabled", "categories", "detail_level")


def _categories(value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigError(f"categories must be a list of category names ({', '.join(CATEGORIES)}), not {value!r}")
    for category in value:
        if category not in CATEGORIES:
            raise ConfigError(f"unknown category {category!r}: use one or more of {', '.join(CATEGORIES)}")
    return tuple(c for c in CATEGORIES if c in set(value))


def _detail_level(value) -> str:
    if value not in DETAIL_LEVELS:
        raise ConfigError(f"unknown detail level {value!r}: use one of {', '.join(DETAIL_LEVELS)}")
    return value


def _enabled(value) -> bool:
    if type(value) is not bool:
        raise ConfigError(f"enabled must be true or false, not {value!r}")
    return value


def parse_categories(text: str) -> tuple[str, ...]:
    """``"console,network"`` -> ``("console", "network")``; an empty string is no category."""
    if not isinstance(text, str):
        raise ConfigError(f"categories must be a comma-separated string, not {text!r}")
    return _categories([part.strip() for part in text.split(",") if part.strip()])


class ProducerConfig:
    """What a producer captures: ``enabled``, ``categories`` (a tuple), ``detail_level``."""

    __slots__ = ("categories", "detail_level", "enabled")

    def __init__(self, enabled: bool = True, categories=CATEGORIES, detail_level: str = "standard"):
        object.__setattr__(self, "enabled", _enabled(enabled))
        object.__setattr__(self, "categories", _categories(categories))
        object.__setattr__(self, "detail_level", _detail_level(detail_level))

    def __setattr__(self, name, value):
        raise AttributeError("a ProducerConfig is immutable: use patched()")

    @classmethod
    def from_dict(cls, config: dict) -> "ProducerConfig":
        """The whole config (as ``PUT`` gives it): every field present, none unknown."""
        cls._check_fields(config)
        missing = [f for f in FIELDS if f not in config]
        if missing:
            raise ConfigError(f"a whole producer config needs {', '.join(missing)} too "
                              f"(fields: {', '.join(FIELDS)}); to change some fields only, send a patch")
        return cls(config["enabled"], config["categories"], config["detail_level"])

    def patched(self, patch: dict) -> "ProducerConfig":
        """This config with the fields in `patch` (as ``PATCH`` gives it) replaced."""
        self._check_fields(patch)
        merged = self.to_dict()
        merged.update(patch)
        return ProducerConfig(merged["enabled"], merged["categories"], merged["detail_level"])

    @staticmethod
    def _check_fields(config) -> None:
        if not isinstance(config, dict):
            raise ConfigError(f"a producer config is a JSON object with {', '.join(FIELDS)}, not {config!r}")
        unknown = sorted(set(config) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown producer config field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "categories": list(self.categories), "detail_level": self.detail_level}

    def active(self) -> frozenset:
        """The categories captured now: none while disabled."""
        return frozenset(self.categories) if self.enabled else frozenset()

    def __eq__(self, other) -> bool:
        return isinstance(other, ProducerConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.enabled, self.categories, self.detail_level))

    def __repr__(self) -> str:
        return (f"ProducerConfig(enabled={self.enabled!r}, categories={list(self.categories)!r}, "
                f"detail_level={self.detail_level!r})")

    def __reduce__(self):
        return ProducerConfig, (self.enabled, self.categories, self.detail_level)
