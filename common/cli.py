"""Command-line options built from a config dataclass, so each default is written once.

A config field becomes an option when its ``metadata`` has a ``help`` text, which
:func:`opt` writes::

    @dataclass(frozen=True)
    class ServeConfig:
        port: int = opt(8080, "TCP port to listen on (0: any free port)")
        host: str = opt("127.0.0.1", "address to listen on")
        name: str = "internal"                      # no help: not an option

    add_options(parser, ServeConfig)               # --port (int, default 8080), --host
    config = from_args(ServeConfig, parser.parse_args())

The option's type comes from the field's annotation (``int``, ``float``, ``str``,
``Path``, ``bool``, ``X | None``, ``tuple[X, ...]``); its default, shown in
``--help``, from the field. Metadata may also set ``flag`` (another option name),
``parse`` (a function from the text to the value; its ``ValueError`` becomes a
usage error), ``choices``, ``metavar``, ``action="append"`` (repeatable) and
``required``. A ``flag`` without leading dashes makes a positional argument;
a field without a default is a required option. A ``bool`` field with default False is a plain positive flag
(``--resume``); one with default True also gets ``--no-...``.

Only argparse and the standard library are used: every package may import this.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", **meta: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field that is also a command-line option (see the module docstring)."""
    if default is _MISSING:
        return dataclasses.field(metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None was allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` for ``parse``: its ``ValueError`` message becomes the usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names it in "invalid ... value"
    return convert


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that are command-line options (those with a help text)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    defaults: Any = None,
    prefix: str = "",
) -> None:
    """Add one option per option field of ``cls`` (not those in ``exclude``).

    ``defaults``: an instance whose values are shown and used as the defaults instead
    of the class's own (e.g. a subcommand that trains with other defaults).
    ``prefix``: put before each value's name on the parsed namespace, so two configs
    with a field of the same name can share one parser (pass it to :func:`from_args` too).
    """
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    for f in option_fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_text = meta.pop("help")
        parse = meta.pop("parse", None)
        positional = not flag.startswith("-")  # flag=<name>: a positional argument
        kwargs: dict[str, Any] = {**meta} if positional else {"dest": prefix + f.name, **meta}
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:
            default = f.default_factory()
        else:
            default = _MISSING
        tp, _ = _unwrap(hints[f.name])
        origin = typing.get_origin(tp)
        item = typing.get_args(tp)[0] if origin is tuple else tp  # the type of one value
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        else:
            if origin is tuple and kwargs.get("action") != "append":
                kwargs.setdefault("nargs", "+")
            conv = parse or (Path if item is Path else item if item in (int, float, str) else None)
            if conv is not None:
                kwargs["type"] = arg_type(conv)
        if default is _MISSING:
            if not positional:
                kwargs.setdefault("required", True)
        else:
            if not (default is None or default is False or default == ()) and "%(default)" not in help_text:
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
                help_text += f" (default: {shown})"
            # argparse appends to a default list, so an append option starts at None: the field's default.
            append = kwargs.get("action") == "append"
            kwargs["default"] = None if append else list(default) if isinstance(default, tuple) else default
        if "metavar" not in kwargs and tp is not bool and not kwargs.get("choices") and not positional:
            kwargs["metavar"] = {int: "N", float: "NUMBER", Path: "PATH"}.get(item, "TEXT")
        kwargs["help"] = help_text
        parser.add_argument(flag, **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", **overrides: Any) -> T:
    """An instance of ``cls`` from parsed options (fields not on ``args`` keep their defaults)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides or not hasattr(args, prefix + f.name):
            continue
        value = getattr(args, prefix + f.name)
        if value is None and f.metadata.get("action") == "append":
            continue  # never given: the field's own default
        tp, _ = _unwrap(hints[f.name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values, **overrides)
