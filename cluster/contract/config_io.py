"""Reading configs: YAML with line numbers, dotted overrides, and type checking of dataclasses.

Generic over frozen config dataclasses; ``cluster.config`` holds the classes themselves.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import re
import textwrap
import typing
from functools import lru_cache
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, located by key path (and file/line when known)."""

    def __init__(
        self,
        key: str,
        problem: str,
        *,
        value: Any = dataclasses.MISSING,
        hint: Optional[str] = None,
        source: Optional[str] = None,
        line: Optional[int] = None,
    ) -> None:
        self.key, self.problem, self.value, self.hint = key, problem, value, hint
        self.source, self.line = source, line
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line else f"{self.source}: "
        got = "" if self.value is dataclasses.MISSING else f" (got {self.value!r})"
        hint = f"; {self.hint}" if self.hint else ""
        return f"{where}config key '{self.key}': {self.problem}{got}{hint}"

    def located(self, prefix: str = "", source: Optional[str] = None,
                lines: Optional[Mapping[str, int]] = None) -> "ConfigError":
        """The same error with its key under ``prefix`` and, if known, its file and line."""
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        line = self.line
        if lines is not None and line is None:
            line = _nearest_line(key, lines)
        return ConfigError(key, self.problem, value=self.value, hint=self.hint,
                           source=source or self.source, line=line)


def _nearest_line(key: str, lines: Mapping[str, int]) -> Optional[int]:
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return None


def field_help(cls: type) -> Dict[str, str]:
    """The docstring under each field of a config dataclass, by field name."""
    return dict(_field_docs(cls))


@lru_cache(maxsize=None)
def _field_docs(cls: type) -> Tuple[Tuple[str, str], ...]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = []
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs.append((node.target.id, " ".join(nxt.value.value.split())))
    return tuple(docs)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, Tuple) and typing.get_args(tp)[-1:] == (Ellipsis,):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (tuple, Tuple):
        return "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    return getattr(tp, "__name__", str(tp))


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns it (ints widened to float)."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(key, f"expected {_type_name(tp)}", value=value)
    if origin is Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise wrong
    if origin is Literal:
        # YAML 1.1 reads a bare off / on as a boolean; where the choices spell them, the
        # user meant the word.
        word = {False: "off", True: "on"}.get(value) if isinstance(value, bool) else None
        if word in typing.get_args(tp):
            return word
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        raise ConfigError(key, f"expected one of {_type_name(tp)}", value=value,
                          hint=f"did you mean {close[0]!r}?" if close else None)
    if origin in (tuple, Tuple) and typing.get_args(tp)[-1:] == (Ellipsis,):
        # A list of one type: dataclass items are built (and checked) like sections.
        item = typing.get_args(tp)[0]
        if isinstance(value, str) and not dataclasses.is_dataclass(item):
            # A list of plain values may be given comma-separated (an override's way).
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, "expected a list", value=value)
        if dataclasses.is_dataclass(item):
            return tuple(build(item, v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise wrong
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(key, "must be a finite number", value=value)
            return float(value)
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    raise ConfigError(key, f"unsupported field type {tp!r}")  # a bug in a config class


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Construct dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "<root>", "expected a mapping of keys to values", value=data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else (
                f"valid keys: {', '.join(fields)}")
            raise ConfigError(path, "unknown key", hint=hint)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value if value is not None else {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.located(prefix) from None


class _LineLoader(yaml.SafeLoader):
    """Safe YAML loader that also records the line of every mapping key."""


def load_yaml(text: str, source: str) -> Tuple[Any, Dict[str, int]]:
    loader = _LineLoader(text)
    lines: Dict[str, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, lines

        def walk(n: yaml.Node, prefix: str) -> None:
            if isinstance(n, yaml.MappingNode):
                for key_node, value_node in n.value:
                    path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                    lines[path] = key_node.start_mark.line + 1
                    walk(value_node, path)

        walk(node, "")
        return loader.construct_document(node), lines
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError("", f"malformed YAML: {problem}", source=source,
                          line=mark.line + 1 if mark else None,
                          hint="fix the syntax at that line") from None
    finally:
        loader.dispose()


def set_dotted(data: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section",
                              value=child)
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> Tuple[str, Any]:
    """'algo.group_size=2' -> ('algo.group_size', 2); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(text, "an override must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def options_help(config: Any) -> str:
    """Every key of ``config`` (a config dataclass instance) with its default and meaning."""
    lines = ["config keys (set in --config YAML or as key=value overrides):"]

    def walk(cls, prefix: str, default) -> None:
        docs = field_help(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.", value)
                continue
            lines.append(f"  {prefix}{f.name} = {value!r}")
            lines.append(f"      {docs.get(f.name, '')}")

    walk(type(config), "", config)
    return "\n".join(lines)
