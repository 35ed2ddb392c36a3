import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forge.config import add_options, build, field_docs, from_args
from forge.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Inner:
    width: int = 8
    """how wide"""


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = "x"
    """a name"""
    rate: float = 0.5
    """a rate in %"""
    flag: bool = False
    """turn it on"""
    items: tuple[str, ...] = ()
    """some items"""
    limit: int | None = None
    """an optional limit"""
    inner: Inner = field(default_factory=Inner)
    """nested options"""


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    add_options(parser, Outer)
    return parser.parse_args(argv)


def test_field_docs_are_read_from_the_source() -> None:
    assert field_docs(Outer)["rate"] == "a rate in %"
    assert field_docs(Inner) == {"width": "how wide"}


def test_layers_defaults_preset_toml_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('rate = 0.25\nitems = ["a", "b"]\n[inner]\nwidth = 16\n')
    args = _parse(["--config", str(toml), "--inner.width", "32", "--flag", "--limit", "none"])
    config = from_args(Outer, args, preset={"name": "preset", "inner": {"width": 4}})
    assert config == Outer(
        name="preset", rate=0.25, flag=True, items=("a", "b"), limit=None, inner=Inner(width=32)
    )


def test_comma_separated_tuples_and_types() -> None:
    config = from_args(Outer, _parse(["--items", "p,q", "--limit", "3", "--rate", "1e-3"]))
    assert config.items == ("p", "q") and config.limit == 3 and config.rate == 1e-3


def test_unknown_key_in_toml_names_it_and_suggests(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("rat = 1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'rat'.*did you mean 'rate'"):
        from_args(Outer, _parse(["--config", str(toml)]))


def test_wrong_type_names_the_option() -> None:
    with pytest.raises(ConfigError, match="rate must be float, got 'fast'"):
        from_args(Outer, _parse(["--rate", "fast"]))
    with pytest.raises(ConfigError, match="width"):
        build(Outer, {"inner": {"width": 1.5}})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("rate = = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        from_args(Outer, _parse(["--config", str(toml)]))
