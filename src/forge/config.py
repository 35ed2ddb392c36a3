"""Configuration: stage dataclasses ← defaults, presets, TOML files and command-line flags.

Each stage owns one frozen dataclass with a docstring under every field. This module turns such a
dataclass into argparse options (the field docstring is the `--help` text), reads TOML files, and builds
the dataclass from layered values, later layers winning:

    dataclass defaults  <  --preset NAME  <  --config FILE.toml  <  flags given on the command line

Nested dataclasses are addressed with dotted names: `--model.dim 256` on the command line, a `[model]`
table in TOML. Unknown keys and values of the wrong type are errors that name the key and the file.
"""

import argparse
import ast
import dataclasses
import difflib
import inspect
import textwrap
import tomllib
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

from forge.errors import ConfigError


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass to the docstring written under it (bases included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for stmt, nxt in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`int | None` → (int, True); `int` → (int, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a TOML or command-line value to the field type `tp`; raise ConfigError naming `name`."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name} needs a value")
    origin = typing.get_origin(base)
    try:
        if origin is tuple:
            (item_tp, *_rest) = typing.get_args(base) or (str,)
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(
                coerce(v.strip() if isinstance(v, str) else v, item_tp, name) for v in items if v != ""
            )
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        kind = getattr(base, "__name__", str(base))
        raise ConfigError(f"{name} must be {kind}, got {value!r}") from None
    return value


def _suggest(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """Build dataclass `cls` from a (possibly nested) dict, checking names and types."""
    types_ = _field_types(cls)
    kwargs: dict[str, Any] = {}
    origin = f" in {where}" if where else ""
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(
                f"unknown option {key!r}{origin}{_suggest(key, types_)}; known: {', '.join(sorted(types_))}"
            )
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}{origin} must be a table of options, got {value!r}")
            kwargs[key] = build(tp, value, where=f"{where}[{key}]" if where else key)  # type: ignore[arg-type]
        else:
            kwargs[key] = coerce(value, tp, f"{key}{origin}")
    return cls(**kwargs)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested dicts; `override` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"model.dim": 8} → {"model": {"dim": 8}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, with errors that name the file and line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready nested dict (tuples become lists)."""
    return json_ready(dataclasses.asdict(obj))


def json_ready(value: Any) -> Any:
    """Tuples → lists, recursively, so the value round-trips through JSON and TOML."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


# ---- argparse ----------------------------------------------------------------------------------------


def add_options(
    parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: typing.Collection[str] = ()
) -> None:
    """Add one `--option` per dataclass field (nested dataclasses as `--prefix.field`).

    Defaults are suppressed so the parsed namespace holds only what the user typed; the dataclass
    defaults are shown in the help text and applied by `build`.
    """
    docs = field_docs(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    group = parser.add_argument_group(f"{prefix.rstrip('.')} options") if prefix else parser
    for name, tp in _field_types(cls).items():
        if f"{prefix}{name}" in skip:
            continue
        if dataclasses.is_dataclass(tp):
            add_options(parser, tp, prefix=f"{prefix}{name}.", skip=skip)  # type: ignore[arg-type]
            continue
        flag = f"--{prefix}{name.replace('_', '-')}"
        dest = f"{prefix}{name}"
        default = defaults.get(name)
        base, _ = _unwrap_optional(tp)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{docs.get(name, '')} (default: {shown if shown not in ('', ()) else 'none'})"
        help_text = help_text.replace("%", "%%")
        if base is bool:
            group.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            metavar = (
                "A,B,..." if typing.get_origin(base) is tuple else getattr(base, "__name__", "X").upper()
            )
            group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def from_args(
    cls: type,
    args: argparse.Namespace,
    *,
    preset: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Build `cls` from defaults < preset < --config TOML < typed flags (< `extra`, set by the command)."""
    layered: dict[str, Any] = dict(preset or {})
    config_file = getattr(args, "config", None)
    if config_file:
        layered = merge(layered, load_toml(config_file))
    known = set(_flat_names(cls))
    typed = {k: v for k, v in vars(args).items() if k in known}
    layered = merge(layered, unflatten(typed))
    layered = merge(layered, extra or {})
    return build(cls, layered, where=str(config_file) if config_file else "")


def _flat_names(cls: type, prefix: str = "") -> list[str]:
    names = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            names += _flat_names(tp, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            names.append(f"{prefix}{name}")
    return names
