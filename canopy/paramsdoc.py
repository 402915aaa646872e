"""`canopy params`: every key of params.yaml with its default, allowed values and meaning, read
from the schemas themselves (one source of truth), and a check of a whole params file.

The meaning of a key is the comment beside it in its schema class (on its line, or on the
comment lines just above it); docs/params.md is this module's Markdown output, and a test keeps
the two the same.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
import typer
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from canopy.errors import user_errors
from canopy.params import ALL_SECTIONS, DEFAULT_PARAMS, load_params, schema_for


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted path; a list of mappings shows as `aois[].name`
    default: str
    allowed: str
    meaning: str


def reference(sections: tuple[str, ...] = ()) -> Iterator[tuple[str, str, list[KeyDoc]]]:
    """(title, description, keys) per part of the file: the top-level keys, then each section
    (all of them, or those named)."""
    root = schema_for(frozenset(ALL_SECTIONS))
    top = [name for name, field in root.model_fields.items() if name not in ALL_SECTIONS]
    if not sections:
        yield "top level", "Keys every stage reads.", list(_keys(root, top, ""))
    for name in sections or ALL_SECTIONS:
        schema = _model_of(root.model_fields[name].annotation)
        yield name, _docstring(schema), list(_keys(schema, list(schema.model_fields), name + "."))


def _keys(model: type[BaseModel], names: list[str], prefix: str) -> Iterator[KeyDoc]:
    comments = field_comments(model)
    for name in names:
        field = model.model_fields[name]
        key = prefix + name
        nested = _model_of(field.annotation)
        if nested is not None and not _takes_scalars(field.annotation):
            meaning = comments.get(name) or _docstring(nested)
            yield KeyDoc(key, _default(field), _allowed(field), meaning)
            inner = key + "[]." if _is_list(field.annotation) else key + "."
            yield from _keys(nested, list(nested.model_fields), inner)
            continue
        yield KeyDoc(key, _default(field), _allowed(field), comments.get(name, ""))


@functools.cache
def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment of each field of a schema class: on its line(s), after the comment lines
    just above it (a blank line or another statement ends those)."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):  # a class made at run time has no source
        return {}
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        found[node.target.id] = " ".join(part for part in above + beside if part)
    return found


def _docstring(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if doc == BaseModel.__doc__ or doc.startswith("A params section."):
        return ""
    return " ".join(doc.split())


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(a mapping)"
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _allowed(field: FieldInfo) -> str:
    bounds = _bounds(field.metadata)
    kinds = _describe(field.annotation)
    return kinds + (f", {bounds}" if bounds else "")


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(f"{symbol} {value:,}" if isinstance(value, int) else
                             f"{symbol} {value}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            parts.append(f"at least {item.min_length} long")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matching {pattern}")
    return " and ".join(parts)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(yaml.safe_dump(arg, default_flow_style=True).strip().removesuffix(
            "\n...") for arg in args)
    if origin in (typing.Union, types.UnionType):
        described = [_describe(arg) for arg in args if arg is not type(None)]
        text = " or ".join(dict.fromkeys(described))
        return text + " or null" if type(None) in args else text
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)}: " + ", ".join(_describe(arg) for arg in args)
        return f"a list of ({_describe(args[0])})" if args else "a list"
    names = {bool: "true | false", int: "an integer", float: "a number", str: "text"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _takes_scalars(annotation: Any) -> bool:
    """A field that takes plain values too (`str | list[str] | LocalEntry` entries), whose
    mapping form is documented on its own class."""
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _model_of(arg) is None and arg is not type(None) for arg in typing.get_args(annotation))


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation))


# --- rendering --------------------------------------------------------------------------

MARKDOWN_HEADER = """# params.yaml reference

Every key of `params.yaml`, with its default, the values it takes and what it does. This page is
generated from the schemas (`canopy params show --markdown > docs/params.md`; a test keeps it in
step with them): each stage checks the top-level keys and the sections it reads when it starts,
and `canopy params check` checks them all. The figures behind the defaults are in
[benchmarks](benchmarks.md).
"""


def markdown(sections: tuple[str, ...] = ()) -> str:
    out = [MARKDOWN_HEADER]
    for title, description, keys in reference(sections):
        out.append(f"## {title}\n")
        if description:
            out.append(description + "\n")
        out.append("| key | default | allowed | meaning |\n|---|---|---|---|")
        for doc in keys:
            cells = [f"`{doc.key}`", f"`{doc.default}`", doc.allowed, doc.meaning]
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("")
    return "\n".join(out)


def plain(sections: tuple[str, ...] = ()) -> str:
    out = []
    for title, description, keys in reference(sections):
        out.append(f"[{title}]" + (f" {description}" if description else ""))
        for doc in keys:
            out.append(f"{doc.key}: {doc.default}    ({doc.allowed})")
            if doc.meaning:
                out.extend("    " + line for line in textwrap.wrap(doc.meaning, 92))
        out.append("")
    return "\n".join(out)


params_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                         help="The params.yaml reference, and a check of a whole params file.")


@params_app.command("show")
def show(
    sections: list[str] = typer.Argument(None, help=f"Sections to show: {', '.join(ALL_SECTIONS)}"
                                                    " (default: every key)."),
    as_markdown: bool = typer.Option(False, "--markdown",
                                     help="A Markdown table per section (docs/params.md)."),
) -> None:
    """Print every key of params.yaml: its default, the values it takes and what it does."""
    with user_errors("params"):
        from canopy.errors import UserError

        unknown = [name for name in sections or () if name not in ALL_SECTIONS]
        if unknown:
            raise UserError(f"no section {', '.join(unknown)}: the sections are "
                            f"{', '.join(ALL_SECTIONS)}")
        chosen = tuple(sections or ())
        print(markdown(chosen) if as_markdown else plain(chosen), end="")


@params_app.command("check")
def check(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to check."),
) -> None:
    """Check every section of a params file, as the stages will (each checks only its own)."""
    with user_errors("params"):
        load_params(params)
        print(f"params: {params} is valid (every section checked)")
