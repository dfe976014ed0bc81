"""LoRA specifications: the startup syntax, a request's `loras`, and how the two combine.

Startup (DEFAULT_LORAS) and request strings share one syntax, the one the embedded bridge used:
``name[:strength_model[:strength_clip]]``. Strengths are taken from the right, so a name that
itself contains ':' still works as long as it does not end in ':<number>'.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from api.exceptions import LoraSpecError

# Generous, but keeps a typo like 80 (meant 0.8) from reaching ComfyUI.
STRENGTH_LIMIT = 10.0
MAX_LORAS = 10
_SEPARATORS = re.compile(r"[,\n]")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to chain after the workflow's model: file name and strengths."""

    name: str
    strength: float = 1.0
    strength_clip: float | None = None
    source: str = "request"

    def as_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "strength": self.strength}
        if self.strength_clip is not None:
            out["strength_clip"] = self.strength_clip
        out["source"] = self.source
        return out


def _strength(text: Any, where: str) -> float:
    if isinstance(text, bool):
        raise LoraSpecError(f"{where}: strength must be a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LoraSpecError(f"{where}: strength {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > STRENGTH_LIMIT:
        raise LoraSpecError(
            f"{where}: strength {text} is outside -{STRENGTH_LIMIT:g}..{STRENGTH_LIMIT:g}"
        )
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_name(name: str, where: str) -> str:
    name = name.strip()
    if not name:
        raise LoraSpecError(f"{where}: the LoRA file name is empty")
    if len(name) > 256 or "\x00" in name:
        raise LoraSpecError(f"{where}: {name[:40]!r}... is not a LoRA file name")
    return name


def parse(text: str, source: str = "request", where: str = "lora") -> LoraSpec:
    """Parse one ``name[:strength_model[:strength_clip]]`` entry."""
    parts = text.strip().split(":")
    numbers: list[str] = []
    while len(parts) > 1 and len(numbers) < 2 and _is_number(parts[-1].strip()):
        numbers.insert(0, parts.pop().strip())
    name = _check_name(":".join(parts), where)
    strength = _strength(numbers[0], where) if numbers else 1.0
    clip = _strength(numbers[1], where) if len(numbers) > 1 else None
    return LoraSpec(name, strength, clip, source)


def parse_list(text: str, source: str = "default") -> tuple[LoraSpec, ...]:
    """Comma- or newline-separated entries (DEFAULT_LORAS); blank entries are skipped."""
    entries = [e for e in (p.strip() for p in _SEPARATORS.split(text or "")) if e]
    specs = tuple(parse(e, source, f"entry {e!r}") for e in entries)
    _no_duplicates(specs)
    return specs


def from_request(value: list) -> list[LoraSpec]:
    """A request's `loras`: strings in the startup syntax, or {name, strength[, strength_clip]}."""
    specs: list[LoraSpec] = []
    for index, item in enumerate(value):
        where = f"loras[{index}]"
        if isinstance(item, str):
            specs.append(parse(item, "request", where))
        elif isinstance(item, dict):
            strength = item.get("strength", item.get("strength_model", 1.0))
            clip = item.get("strength_clip")
            specs.append(
                LoraSpec(
                    _check_name(str(item.get("name", "")), where),
                    _strength(strength, where),
                    None if clip is None else _strength(clip, where),
                    "request",
                )
            )
        else:
            raise LoraSpecError(f"{where}: expected 'name:strength' or an object")
    _no_duplicates(specs)
    return specs


def _no_duplicates(specs) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise LoraSpecError(f"LoRA {spec.name!r} is listed twice")
        seen.add(spec.name)


def combine(defaults: tuple[LoraSpec, ...], requested: list[LoraSpec]) -> list[LoraSpec]:
    """Defaults first, then the request's; a requested name replaces the default of that name."""
    wanted = {spec.name for spec in requested}
    return [d for d in defaults if d.name not in wanted] + list(requested)


# JSON Schema of a request's `loras`; the strings are parsed after validation.
REQUEST_SCHEMA = {
    "type": "array",
    "maxItems": MAX_LORAS,
    "items": {
        "anyOf": [
            {"type": "string", "minLength": 1, "maxLength": 300},
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 256},
                    "strength": {"type": "number"},
                    "strength_model": {"type": "number"},
                    "strength_clip": {"type": "number"},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
        ],
        "description": 'a LoRA as \'name:strength\' or {"name": ..., "strength": ...}',
    },
    "description": "LoRAs chained (LoraLoaderModelOnly) between the model loader and its "
    "consumers, after the workflow's own LoRAs and the configured DEFAULT_LORAS.",
}
