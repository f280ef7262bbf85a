"""Value types shared by the manifest models: names, labels, quantities, durations.

Each parser raises `ValueError` with a message that says what would be right;
pydantic turns it into a field error, and `mlsm.manifests` adds file:line:col.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = [
    "DNS_LABEL_MAX",
    "Bytes",
    "Cores",
    "Duration",
    "LabelKey",
    "LabelValue",
    "Labels",
    "ResourceName",
    "check_label_key",
    "check_label_value",
    "check_name",
    "format_bytes",
    "format_cores",
    "format_duration",
    "parse_bytes",
    "parse_cores",
    "parse_duration",
]

DNS_LABEL_MAX = 63
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_name(value: str) -> str:
    """A DNS-1123 label, as Kubernetes names are: it becomes part of paths and URLs."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > DNS_LABEL_MAX:
        raise ValueError(f"must be at most {DNS_LABEL_MAX} characters, got {len(value)}")
    if not _DNS_LABEL.fullmatch(value):
        suggestion = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:DNS_LABEL_MAX]
        hint = f"; try '{suggestion}'" if suggestion and _DNS_LABEL.fullmatch(suggestion) else ""
        raise ValueError(
            "must be lowercase letters, digits and '-', starting and ending with a letter "
            f"or digit (a DNS-1123 label){hint}"
        )
    return value


def check_label_key(value: str) -> str:
    """A Kubernetes label key: an optional DNS subdomain prefix and '/', then a name."""
    prefix, slash, name = value.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(
            f"label key prefix '{prefix}' must be a lowercase DNS subdomain such as "
            "'example.com', at most 253 characters"
        )
    if not name or len(name) > DNS_LABEL_MAX or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key '{value}' is invalid: the name part must be 1-63 characters of "
            "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return value


def check_label_value(value: str) -> str:
    """A Kubernetes label value: empty, or a label name of at most 63 characters."""
    if value and (len(value) > DNS_LABEL_MAX or not _LABEL_NAME.fullmatch(value)):
        raise ValueError(
            f"label value '{value}' is invalid: at most 63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return value


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>[KMGTPE]i|[kMGTPE])?")


def parse_bytes(value: Any) -> Any:
    """A memory or disk size: bytes as an integer, or a quantity such as '16Gi' or '500M'."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return value  # let pydantic report the type
    if isinstance(value, int):
        return value
    match = _QUANTITY.fullmatch(value.strip())
    if not match:
        raise ValueError(
            f"'{value}' is not a size; write bytes as a number or a quantity such as "
            "'512Mi', '16Gi' or '2G'"
        )
    scale = _BINARY.get(match["suffix"] or "") or _DECIMAL.get(match["suffix"] or "") or 1
    number = float(match["number"]) * scale
    if number != int(number):
        raise ValueError(f"'{value}' is not a whole number of bytes")
    return int(number)


def _check_bytes(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def format_bytes(value: int) -> str | int:
    """The shortest exact binary quantity ('16Gi'), or the plain number."""
    for suffix, scale in reversed(_BINARY.items()):
        if value and value % scale == 0:
            return f"{value // scale}{suffix}"
    return value


def parse_cores(value: Any) -> Any:
    """CPU cores: a number (2, 0.5) or millicores as Kubernetes writes them ('500m')."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("m"):
                return int(text[:-1]) / 1000
            return float(text)
        except ValueError:
            raise ValueError(
                f"'{value}' is not a CPU amount; write cores (2, 0.5) or millicores ('500m')"
            ) from None
    return value


def _check_cores(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value:g}")
    millicores = value * 1000
    if abs(millicores - round(millicores)) > 1e-6:  # tolerate float noise: 1.001 * 1000
        raise ValueError(f"must be a whole number of millicores (0.001), got {value:g}")
    return round(millicores) / 1000


def format_cores(value: float) -> str | float | int:
    """Whole cores as a number, fractions as millicores ('500m')."""
    if value == int(value):
        return int(value)
    return f"{round(value * 1000)}m"


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|d|h|m|s)")
_DURATION_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: Any) -> Any:
    """A duration: seconds as a number, or '6h30m', '90s', '2d' (Go's units plus days)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    if not isinstance(value, str):
        return float(value)
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(
            f"'{value}' is not a duration; write it as '6h30m', '45m', '90s' or '2d' "
            "(or a number of seconds)"
        )
    return sum(float(number) * _DURATION_SECONDS[unit] for number, unit in parts)


def _check_duration(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be longer than 0s, got {format_duration(value)}")
    return value


def format_duration(value: float) -> str:
    """'6h30m', '90s', '1.5s': the inverse of `parse_duration` for whole milliseconds."""
    millis = round(value * 1000)
    if millis <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        count, millis = divmod(millis, size)
        if count:
            out.append(f"{count}{unit}")
    if millis:
        seconds = millis / 1000
        out.append(f"{seconds:g}s" if millis % 1000 else f"{millis // 1000}s")
    return "".join(out)


ResourceName = Annotated[str, AfterValidator(check_name)]
LabelKey = Annotated[str, AfterValidator(check_label_key)]
LabelValue = Annotated[str, AfterValidator(check_label_value)]
Labels = dict[LabelKey, LabelValue]

Bytes = Annotated[
    int,
    BeforeValidator(parse_bytes),
    AfterValidator(_check_bytes),
    PlainSerializer(format_bytes, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$"},
            ],
            "examples": ["16Gi", "512Mi"],
        }
    ),
]
Cores = Annotated[
    float,
    BeforeValidator(parse_cores),
    AfterValidator(_check_cores),
    PlainSerializer(format_cores, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]+m$|^[0-9]+(\.[0-9]+)?$"},
            ],
            "examples": [4, "500m"],
        }
    ),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_check_duration),
    PlainSerializer(format_duration, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|d|h|m|s))+$"},
            ],
            "examples": ["6h30m", "45m"],
        }
    ),
]
