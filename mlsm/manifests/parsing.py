"""Safe, bounded YAML parsing into plain Python data, keeping where each value was.

libyaml's C parser composes a node graph (with line and column marks); a small walk
turns it into dicts, lists and scalars while enforcing the limits: file size,
nesting depth, alias expansion (a "billion laughs" file is refused in time and
memory linear in its size), duplicate keys, and tags (no Python objects). Only the
plain data leaves a parse, so it can cross a process boundary cheaply; when errors
need locations, a `NodeIndex` composes the file again, once for all of them, and
walks to each field. A file's problems stop at `Limits.max_problems`.

Scalars follow the YAML 1.2 core schema: `yes`, `no`, `on` and `off` are text
(the "Norway problem" of YAML 1.1: `country: NO` stays a string), `010` is ten,
and timestamps stay strings (no manifest field is a date). `<<` merge keys work.

Most files take a fast path: yaml-rs (a Rust parser) reads them straight into
Python data about ten times faster than libyaml composes nodes. It is used only
where it provably agrees with the careful path: no anchors, aliases, tags, merge
keys, directives, tabs, carriage returns or control characters, no number
spelling that the two read differently (`1_000`, `0b11`), and every document
split on its `---` line. Anything else, and any file that fails to parse, goes
through libyaml, which words the error and its location. A property test checks
that the two paths give the same documents.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
import yaml_rs
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mlsm.manifests.problems import Problem

__all__ = [
    "DEFAULT_LIMITS",
    "Document",
    "Limits",
    "NodeIndex",
    "ParsedFile",
    "Position",
    "compose_documents",
    "dump_yaml",
    "locate",
    "parse_bytes",
    "paused_gc",
    "too_large",
]

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _MERGE, _MAP, _SEQ = (_TAG + t for t in ("timestamp", "merge", "map", "seq"))
_STRUCTURE_CHARS = (b"[", b"{", b"-", b"?", b":")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one manifest file may cost to read."""

    max_bytes: int = 1 << 20
    """Largest file read; manifests are small, and a huge file is a mistake."""
    max_depth: int = 64
    """Deepest nesting of mappings and sequences."""
    max_nodes: int = 100_000
    """Most values one document may expand to, aliases counted at every use."""
    max_documents: int = 10_000
    """Most documents ('---') in one file."""
    max_problems: int = 100
    """Most problems described per file: the rest are counted (validation) or not read
    (syntax errors), so that a file's cost stays bounded and its report readable."""
    structure_scan_over: int = 2_000
    """Pieces of a file longer than 4 KiB with more structural characters than this
    are left to the careful path: yaml-rs recurses on the stack for block nesting."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A 1-based line and column in a file (ordered as they are read)."""

    line: int
    column: int


@dataclass(slots=True)
class Document:
    """One YAML document of a file, as plain data."""

    index: int
    """0-based position among the file's documents, empty ones counted."""
    position: Position
    data: Any


@dataclass(slots=True)
class ParsedFile:
    """Every document of one file that could be read, and the problems of the rest."""

    path: str
    documents: list[Document] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


def _core_tag(value: str) -> str:
    """The YAML 1.2 core schema's tag for a plain scalar (and `<<` for merges)."""
    if value in _NULLS:
        return _NULL
    if value in _BOOLS:
        return _BOOL
    if _CORE_INT.fullmatch(value):
        return _INT
    if _CORE_FLOAT.fullmatch(value):
        return _FLOAT
    return _MERGE if value == "<<" else _STR


@functools.lru_cache(maxsize=8192)
def _resolve(kind: Any, value: Any, implicit: Any) -> str:
    """The composer's resolver: the core schema for plain scalars, text for quoted
    ones. Manifests repeat the same keys and values, so the cache mostly hits."""
    if kind is ScalarNode:
        return _core_tag(value) if implicit[0] else _STR
    return _SEQ if kind is SequenceNode else _MAP


def _core_int(value: str) -> int:
    if not _CORE_INT.fullmatch(value):
        raise ValueError(f"'{value}' is not a YAML 1.2 integer")
    if value.startswith("0o"):
        return int(value[2:], 8)
    return int(value[2:], 16) if value.startswith("0x") else int(value)


def _core_float(value: str) -> float:
    if not _CORE_FLOAT.fullmatch(value):
        raise ValueError(f"'{value}' is not a YAML 1.2 number")
    if value.lstrip("+-")[1:2] in ("i", "I"):
        return -math.inf if value.startswith("-") else math.inf
    return math.nan if value[1:2] in ("n", "N") else float(value)


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, made to write what this module reads back unchanged:
    strings the core schema would read as numbers (`1e3`, `0o17`) are quoted, and
    the line breaks only YAML 1.1 knows (NEL, U+2028/9) are escaped, never raw."""

    def choose_scalar_style(self) -> str:
        event = self.event
        if isinstance(event, yaml.ScalarEvent) and any(
            c in event.value for c in "\x85\u2028\u2029"
        ):
            return '"'
        return super().choose_scalar_style()


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Text of several lines as a literal block (`|`), as people write scripts in a
    manifest; PyYAML quotes it instead where a block could not read back equal."""
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    )


_Dumper.add_representer(str, _represent_text)

# (PyYAML matches resolvers at the start only: anchor them to the end too.)
_Dumper.add_implicit_resolver(
    _FLOAT, re.compile(f"(?:{_CORE_FLOAT.pattern})$"), list("-+.0123456789")
)
_Dumper.add_implicit_resolver(_INT, re.compile(f"(?:{_CORE_INT.pattern})$"), list("-+0123456789"))


def dump_yaml(data: Any) -> str:
    """Plain data as block YAML, keys in order, that `parse_bytes` reads back equal."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _ignore(*args: Any) -> None:
    return None


class _Loader(yaml.CSafeLoader):
    """libyaml's composer with a cached tag resolver and no path resolvers.

    The composer calls `resolve` for every node: manifests repeat the same keys and
    values everywhere, so an `lru_cache` (a C-level call when it hits) replaces the
    implicit-tag regexes. Path resolvers are never registered, so the per-node
    descend/ascend hooks do nothing.
    """

    resolve = staticmethod(_resolve)
    descend_resolver = staticmethod(_ignore)  # type: ignore[assignment]
    ascend_resolver = staticmethod(_ignore)


class _Invalid(Exception):
    """A problem found while walking the node graph, with the node to blame."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


class _Fallback(Exception):
    """The lean builder met something only the careful one handles (merge keys, a
    duplicate key, a collection as a key)."""


def _mark(node: Node, line_offset: int) -> Position:
    return Position(node.start_mark.line + 1 + line_offset, node.start_mark.column + 1)


def _scalar(node: ScalarNode) -> Any:
    tag, value = node.tag, node.value
    if tag in (_STR, _TIMESTAMP):
        return value
    if tag == _INT:
        return int(value) if value.isdigit() else _core_int(value)
    if tag == _FLOAT:
        return _core_float(value)
    if tag == _BOOL:
        if value not in _BOOLS:
            raise ValueError(f"'{value}' is not a YAML 1.2 boolean (true or false)")
        return _BOOLS[value]
    if tag == _NULL:
        if value not in _NULLS:
            raise ValueError(f"'{value}' is not a YAML 1.2 null")
        return None
    raise _Invalid(
        node, f"YAML tag '{tag.replace(_TAG, '!!')}' is not allowed; write a plain value"
    )


def _too_deep(max_depth: int) -> str:
    return (
        f"nested deeper than {max_depth} levels, the limit for a manifest; look for a '[' "
        "or '{' that is never closed, or flatten the structure"
    )


def _bad_collection_tag(node: Node) -> _Invalid:
    return _Invalid(
        node,
        f"YAML tag '{node.tag.replace(_TAG, '!!')}' is not allowed; write a plain mapping or list",
    )


def _build_plain(node: Node, depth: int, max_depth: int) -> Any:
    """Node graph -> data for a document without anchors: no alias can repeat a
    node, so no expansion budget or memo is needed, only the depth bound."""
    cls = node.__class__
    if cls is ScalarNode:
        return node.value if node.tag == _STR else _scalar(node)  # type: ignore[arg-type]
    if depth >= max_depth:
        raise _Invalid(node, _too_deep(max_depth))
    if cls is MappingNode:
        if node.tag != _MAP:
            raise _bad_collection_tag(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode or key_node.tag == _MERGE:
                raise _Fallback
            key = key_node.value if key_node.tag == _STR else _scalar(key_node)
            if key in out:
                raise _Fallback  # the careful builder words the duplicate
            out[key] = _build_plain(value_node, depth + 1, max_depth)
        return out
    if node.tag != _SEQ:
        raise _bad_collection_tag(node)
    return [_build_plain(item, depth + 1, max_depth) for item in node.value]


class _Builder:
    """Turns a composed node graph into plain data within the limits, counting
    every use of an alias against the expansion budget."""

    __slots__ = ("budget", "done", "limits", "open")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.budget = limits.max_nodes
        self.done: dict[int, tuple[Any, int]] = {}
        self.open: set[int] = set()

    def build(self, node: Node, depth: int = 0) -> Any:
        cls = node.__class__
        if cls is ScalarNode:
            self.budget -= 1  # the enclosing collection reports an overrun
            return _scalar(node)  # type: ignore[arg-type]
        key = id(node)
        seen = self.done.get(key)
        if seen is not None:  # an alias of a finished node: count its expansion again,
            self.budget -= seen[1]  # sharing the value (memory stays linear)
            return seen[0]
        if key in self.open:
            raise _Invalid(node, "an alias refers to a value that contains it (recursive)")
        if depth >= self.limits.max_depth:
            raise _Invalid(node, _too_deep(self.limits.max_depth))
        if node.tag not in (_MAP, _SEQ):
            raise _bad_collection_tag(node)
        before = self.budget
        self.budget -= 1
        self.open.add(key)
        if cls is MappingNode:
            value: Any = self._mapping(node, depth + 1)  # type: ignore[arg-type]
        else:
            value = [self.build(item, depth + 1) for item in node.value]
        self.open.discard(key)
        if self.budget < 0:
            raise self._too_big(node)
        self.done[key] = (value, before - self.budget)
        return value

    def _mapping(self, node: MappingNode, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        lines: dict[Any, int] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            key = self.build(key_node, depth)
            if isinstance(key, (dict, list)):
                raise _Invalid(
                    key_node, "a mapping key must be a plain value, not a mapping or list"
                )
            if key in lines:
                raise _Invalid(
                    key_node,
                    f"duplicate key '{key}' (first at line {lines[key]}); YAML keeps only "
                    "the last, so remove one",
                )
            lines[key] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, depth)
        for source in merged:  # '<<: *defaults': explicit keys win, earlier sources first
            items = source.value if isinstance(source, SequenceNode) else [source]
            for item in items:
                value = self.build(item, depth)
                if not isinstance(value, dict):
                    raise _Invalid(item, "'<<' merges only mappings")
                for key, merged_value in value.items():
                    out.setdefault(key, merged_value)
        return out

    def _too_big(self, node: Node) -> _Invalid:
        return _Invalid(
            node,
            f"the document expands to more than {self.limits.max_nodes} values (through "
            "aliases?); manifests are small, so this looks like an alias bomb",
        )


class _PureEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's Python parser: slower than libyaml's, but with no nesting limit of its
    own, so that mlsm's limit is the one a user meets."""

    def __init__(self, data: io.BytesIO) -> None:
        yaml.reader.Reader.__init__(self, data)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


def _rest_not_read(path: str, line: int, problems: int) -> Problem:
    """The file's problems reached `Limits.max_problems`: reading stops at `line`."""
    return Problem(
        path=path,
        line=line,
        column=1,
        message=f"{problems} problems before this line; the rest of the file was not read: "
        "fix these and check again",
    )


def _structure_count(data: bytes) -> int:
    return sum(data.count(c) for c in _STRUCTURE_CHARS)


def _check_depth(data: io.BytesIO, path: str, limits: Limits) -> Problem | None:
    """Refuse nesting deeper than `limits.max_depth` before anything else sees it:
    libyaml's composer recurses in C, and libyaml refuses deep nesting itself, in its
    own words and at its own depth (1,000 levels, found by a scanner that reads ahead
    1,024 characters). Its event parser finds the first level too deep in a file that
    nests moderately; where it gives up first (nesting it will not scan, or a syntax
    error), the Python parser looks again, up to the first problem it meets."""
    start = data.tell()
    loader = _Loader(data)
    try:
        return _first_too_deep(loader, path, limits)
    except yaml.YAMLError:
        pass
    finally:
        loader.dispose()
    data.seek(start)
    try:
        return _first_too_deep(_PureEvents(data), path, limits)
    except yaml.YAMLError:
        return None  # the real parse reports the syntax error with its context


def _first_too_deep(events: Any, path: str, limits: Limits) -> Problem | None:
    depth = 0
    while events.check_event():
        event = events.get_event()
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > limits.max_depth:
                mark = event.start_mark
                return Problem(
                    path=path,
                    line=mark.line + 1 if mark else 1,
                    column=mark.column + 1 if mark else 1,
                    message=_too_deep(limits.max_depth),
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return None


def _reader_problem(
    path: str, exc: yaml.reader.ReaderError, data: bytes, start: int, line_offset: int
) -> Problem:
    """Bad bytes (invalid UTF-8, NUL): libyaml gives an offset, not a line."""
    before = data[start : start + exc.position]
    line = before.count(b"\n") + 1
    column = exc.position - (before.rfind(b"\n") + 1) + 1
    character = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return Problem(
        path=path,
        line=line + line_offset,
        column=column,
        message=f"invalid text: {exc.reason} (byte 0x{character:02x}); manifests must be "
        "UTF-8 without control characters",
    )


def _yaml_problem(path: str, exc: yaml.YAMLError, line_offset: int) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}"
    if context:
        message += f" ({context})"
    if mark is None:
        return Problem(path=path, line=1 + line_offset, column=1, message=message)
    return Problem(
        path=path, line=mark.line + 1 + line_offset, column=mark.column + 1, message=message
    )


def compose_documents(data: bytes | io.BytesIO) -> Iterator[Node | None]:
    """The node graph of each document (None for an empty one), in order."""
    loader = _Loader(data)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


_DOCUMENT_START = re.compile(rb"^---(?=[ \t\r\n]|$)", re.MULTILINE)


class _Starts:
    """The '---' lines of a file (byte offset and 0-based line), found once, so that
    resuming after a broken document costs a search, not a pass over the file."""

    def __init__(self, data: bytes) -> None:
        self.offsets: list[int] = []
        self.lines: list[int] = []
        line, position = 0, 0
        for match in _DOCUMENT_START.finditer(data):
            line += data.count(b"\n", position, match.start())
            position = match.start()
            self.offsets.append(position)
            self.lines.append(line)

    def at_or_after(self, line: int) -> tuple[int, int] | None:
        """The first '---' line at or after `line`: (byte offset, line)."""
        index = bisect.bisect_left(self.lines, line)
        if index == len(self.lines):
            return None
        return self.offsets[index], self.lines[index]


def _iter_documents(
    data: bytes, path: str, limits: Limits
) -> Iterator[tuple[Node | None, int] | Problem]:
    """Each document's node graph and line offset, or the problem that ended one.

    A syntax error ends its document, not the file: composing resumes at the next
    '---' line, so one broken document never hides the others. Each resumption
    reads on from where the last stopped (a stream over the same bytes, not a copy),
    so a file of N broken documents costs what reading it once costs.
    """
    starts: _Starts | None = None
    start, line_offset, problems = 0, 0, 0
    deep_enough = _structure_count(data) > limits.max_depth
    while True:
        stream = io.BytesIO(data)
        stream.seek(start)
        deep = _check_depth(stream, path, limits) if deep_enough else None
        if deep is not None:
            yield Problem(
                path=path, line=deep.line + line_offset, column=deep.column, message=deep.message
            )
            return
        stream.seek(start)
        try:
            for node in compose_documents(stream):
                yield node, line_offset
            return
        except yaml.reader.ReaderError as exc:
            yield _reader_problem(path, exc, data, start, line_offset)
            return  # the rest of the bytes cannot be trusted to be text
        except yaml.YAMLError as exc:
            yield _yaml_problem(path, exc, line_offset)
            problems += 1
            mark = getattr(exc, "problem_mark", None)
            starts = starts or _Starts(data)
            resume = starts.at_or_after(line_offset + max(mark.line if mark else 0, 1))
            if resume is None:
                return
            start, line_offset = resume
            if problems >= limits.max_problems:
                yield _rest_not_read(path, line_offset + 1, problems)
                return


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: loading makes many small acyclic objects,
    and full collections over them cost more than the parse itself. Nests safely."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def too_large(path: str, size: int, limits: Limits) -> Problem:
    """The problem of a file over `limits.max_bytes`, found before reading it all."""
    return Problem(
        path=path,
        line=1,
        column=1,
        message=f"file is {size} bytes, over the {limits.max_bytes}-byte limit for a manifest "
        "file; split it into several files",
    )


# What sends a file down the careful path, checked cheapest first: anchors and
# aliases (the expansion budget), tags, tabs, carriage returns and control characters;
# BOMs and the line breaks only YAML 1.1 knows (NEL, U+2028/9); merge keys and
# directives; number spellings yaml-rs reads as numbers but the core schema reads as
# text (`0b11`, `1_000`); and the syntax YAML 1.2 allows but libyaml refuses: in a
# file with flow collections, a ':' right before a flow indicator (`[a:]`), with no
# key before it (`[:a]`), or starting a value (`{a: :b}`); anywhere, an empty key
# (`- : a`) or an explicit key (`? a`, which the two read differently when empty).
# In a file with flow collections, also: a flow collection left open at the end of a
# line (libyaml refuses a key that spans lines, `{ "multi<newline> line": v}`, and
# yaml-rs reads it), a ':' right after a quoted key with no space after it
# (`{"key"::v}`, `{"k":?v}`), `:?` (`{k:?v}`), and '|' or '>' starting a flow node
# (`{k: |v}`), which yaml-rs reads as text and libyaml as a block scalar's header.
# Every pattern is linear in the file's size.
_CAREFUL_BYTES = re.compile(rb"[&*!\t\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CAREFUL_TEXT = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]|\xef\xbb\xbf|\xef\xbf[\xbe\xbf]")
_NUMBER_PREFIX = re.compile(rb"0(?:[bBOX]|(?<=[-+]0)[xo])")
_UNDERSCORE_NUMBER = re.compile(rb"_(?:(?<=[0-9]_)|(?=[0-9]))")
_FLOW_COLON = re.compile(rb":(?:[,\[\]{}]|(?<= :)[^ \n])")  # literal first: fast to scan for
_FLOW_EMPTY_KEY = re.compile(rb"[\[{,] *:")
_EMPTY_KEY = re.compile(rb"^[ -]*:(?=[ \n]|$)", re.MULTILINE)
_EXPLICIT_KEY = re.compile(rb"\?(?<![^ \n\[{,]\?)")
_QUOTED_KEY_COLON = re.compile(rb"[\"']:[^ \n]")
_FLOW_BLOCK_INDICATOR = re.compile(rb"[|>](?<=[\[{, :].)(?![-+0-9]*(?:[ \n]|$))")
_QUOTED_ON_LINE = re.compile(rb"""(?:(?<=[\[{, :])|^ *)(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\n]|'')*')""")
_QUOTE_LEFT_OPEN = re.compile(rb"""(?:(?<=[\[{, :])|^ *)["']""")
_COMMENT_ON_LINE = re.compile(rb"(?:^| )#.*")
_MARKERS = re.compile(rb"^(?:---|\.\.\.)(?=[ \n]|$)", re.MULTILINE)
_CONTENT = re.compile(rb"^( *)[^ \n#]", re.MULTILINE)
_KEY_TYPES = frozenset({str, int, bool, type(None)})  # float keys: NaN is never equal
_FAST_PIECE_BYTES = 4096
"""Pieces longer than this get their structure counted: yaml-rs recurses on the
stack for block nesting and crashes somewhere past 5,000 levels."""


def _needs_care(data: bytes) -> bool:
    """Whether yaml-rs might read this file otherwise than libyaml with the core schema."""
    return bool(
        _CAREFUL_BYTES.search(data)
        or (not data.isascii() and _CAREFUL_TEXT.search(data))
        or b"<<" in data
        or data.startswith(b"%")
        or b"\n%" in data
        or _NUMBER_PREFIX.search(data)
        or (b"_" in data and _UNDERSCORE_NUMBER.search(data))
        or (
            (b"[" in data or b"{" in data)
            and (
                _FLOW_COLON.search(data)
                or _FLOW_EMPTY_KEY.search(data)
                or b":?" in data
                or ((b'":' in data or b"':" in data) and _QUOTED_KEY_COLON.search(data))
                or ((b"|" in data or b">" in data) and _FLOW_BLOCK_INDICATOR.search(data))
                or _flow_left_open(data)
            )
        )
        or (
            (data.startswith(b":") or b" :" in data or b"-:" in data or b"\n:" in data)
            and _EMPTY_KEY.search(data)
        )
        or (b"?" in data and _EXPLICIT_KEY.search(data))
        or (not data.endswith(b"\n") and (b"|" in data or b">" in data))  # yaml-rs keeps a
    )  # block scalar's final line break where the file has none


def _flow_left_open(data: bytes) -> bool:
    """Whether a line leaves a flow collection (or a quoted scalar in one) open for the
    next: more '[' and '{' than ']' and '}' once quoted scalars and comments are taken
    out. Counting is conservative: a bracket inside a plain scalar counts too."""
    square, curly = data.find(b"["), data.find(b"{")
    while square >= 0 or curly >= 0:
        start = curly if square < 0 or 0 <= curly < square else square
        begin = data.rfind(b"\n", 0, start) + 1
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[begin:end]
        if b'"' in line or b"'" in line:
            line = _QUOTED_ON_LINE.sub(b"", line)
            if _QUOTE_LEFT_OPEN.search(line):
                return True
        if b"#" in line:
            line = _COMMENT_ON_LINE.sub(b"", line)
        if line.count(b"[") + line.count(b"{") > line.count(b"]") + line.count(b"}"):
            return True
        if square >= 0 and square < end:
            square = data.find(b"[", end)
        if curly >= 0 and curly < end:
            curly = data.find(b"{", end)
    return False


def _fits(value: Any, depth: int, max_depth: int, blocks: bool) -> bool:
    """Whether a collection is within the depth bound, has only keys the careful path
    allows, and (where the file has block scalars) no empty block scalar, whose line
    breaks yaml-rs keeps and libyaml drops."""
    if depth >= max_depth:
        return False
    if value.__class__ is dict:
        for key in value:
            if key.__class__ is not str and key.__class__ not in _KEY_TYPES:
                return False
        value = value.values()
    for item in value:
        cls = item.__class__
        if cls is dict or cls is list:
            if not _fits(item, depth + 1, max_depth, blocks):
                return False
        elif blocks and cls is str and item[-1:] == "\n" and item.isspace():
            return False
    return True


def _parse_fast(data: bytes, path: str, limits: Limits) -> ParsedFile | None:
    """The file through yaml-rs, or None where only the careful path may read it."""
    if _needs_care(data):
        return None
    starts = [0]  # where each piece of the file between '---' lines begins
    markers = data.startswith((b"---", b"...")) or b"\n---" in data or b"\n..." in data
    for marker in _MARKERS.finditer(data) if markers else ():
        end = data.find(b"\n", marker.end())
        end = len(data) if end < 0 else end + 1
        if data[marker.start() : marker.start() + 1] == b"." or data[marker.end() : end].strip():
            return None  # '...', or content on the '---' line itself
        starts += [marker.start(), end]
    starts.append(len(data))
    parsed = ParsedFile(path)
    blocks = b"|" in data or b">" in data
    index = lines_before = counted_to = 0
    for number in range(0, len(starts), 2):
        begin, end = starts[number], starts[number + 1]
        content = _CONTENT.search(data, begin, end)
        if content is None:
            if number:  # an explicit empty document counts; text before the first '---' not
                index += 1
            continue
        if index >= limits.max_documents:
            return None
        if end - begin > _FAST_PIECE_BYTES and (
            sum(data.count(c, begin, end) for c in _STRUCTURE_CHARS) > limits.structure_scan_over
        ):
            return None
        try:  # (any YAML value, whatever yaml-rs's stub says)
            value: Any = yaml_rs.loads(
                data[begin:end].decode(),
                parse_datetime=False,
                duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.Error,
            )
        except (yaml_rs.YAMLDecodeError, UnicodeDecodeError, RecursionError):
            return None
        cls = value.__class__
        if cls is dict or cls is list:
            if not _fits(value, 0, limits.max_depth, blocks):
                return None
        elif value is not None:
            return None  # a bare value, never a manifest: the careful path words it
        if value is not None:
            lines_before += data.count(b"\n", counted_to, content.start())  # (on from the last:
            counted_to = content.start()  # from the start each time was quadratic)
            line = lines_before + 1
            column = len(content.group(1)) + 1
            parsed.documents.append(Document(index, Position(line, column), value))
        index += 1
    return parsed


def parse_bytes(data: bytes, path: str, limits: Limits = DEFAULT_LIMITS) -> ParsedFile:
    """Parse a whole file into plain data. Never raises: failures become `Problem`s."""
    parsed = ParsedFile(path)
    if len(data) > limits.max_bytes:
        parsed.problems.append(too_large(path, len(data), limits))
        return parsed
    if not gc.isenabled():  # (loading pauses it around whole trees)
        return _parse_fast(data, path, limits) or _parse_careful(data, path, limits)
    with paused_gc():
        return _parse_fast(data, path, limits) or _parse_careful(data, path, limits)


def _parse_careful(data: bytes, path: str, limits: Limits) -> ParsedFile:
    """The file through libyaml's composer and the limit-keeping builders."""
    parsed = ParsedFile(path)
    has_anchors = b"&" in data or b"*" in data
    index = 0
    for item in _iter_documents(data, path, limits):
        if len(parsed.problems) >= limits.max_problems:
            if isinstance(item, Problem):
                line = item.line
            else:
                line = _mark(item[0], item[1]).line if item[0] is not None else 1
            parsed.problems.append(_rest_not_read(path, line, len(parsed.problems)))
            break
        if isinstance(item, Problem):
            parsed.problems.append(item)
            continue
        if index >= limits.max_documents:
            parsed.problems.append(
                Problem(
                    path=path,
                    line=1,
                    column=1,
                    message=f"more than {limits.max_documents} documents in one file; "
                    "split it into several files",
                )
            )
            break
        node, line_offset = item
        if node is not None:
            _add_document(parsed, node, index, limits, line_offset, has_anchors=has_anchors)
        index += 1
    return parsed


def _add_document(
    parsed: ParsedFile,
    node: Node,
    index: int,
    limits: Limits,
    line_offset: int,
    *,
    has_anchors: bool,
) -> None:
    position = _mark(node, line_offset)
    try:
        try:
            if has_anchors:
                raise _Fallback
            data = _build_plain(node, 0, limits.max_depth)
        except _Fallback:
            data = _Builder(limits).build(node)
    except _Invalid as exc:
        at = _mark(exc.node, line_offset)
        parsed.problems.append(
            Problem(path=parsed.path, line=at.line, column=at.column, message=exc.message)
        )
        return
    except (ConstructorError, ValueError, OverflowError) as exc:
        parsed.problems.append(
            Problem(
                path=parsed.path,
                line=position.line,
                column=position.column,
                message=f"invalid YAML value: {exc}",
            )
        )
        return
    if data is None:
        return  # '---' with nothing after it: an empty document, skipped as kubectl does
    parsed.documents.append(Document(index=index, position=position, data=data))


class NodeIndex:
    """Where fields are written in one file, for locating its problems.

    The file is composed once, document by document, as problems ask for them:
    validation asks in document order, so N problems cost one parse, not N (a parse
    from the start for each made a file of 2,000 invalid documents take a minute).
    Asking for an earlier document starts over. Only the current document's nodes
    are held, with each mapping's keys indexed on first use, so that a document of
    30,000 unknown keys locates each in constant time.
    """

    def __init__(self, data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
        self._data = data
        self._limits = limits
        self._documents: Iterator[tuple[Node | None, int] | Problem] | None = None
        self._current: tuple[Position, Node, int] | None = None
        self._keys: dict[int, dict[str, tuple[Node, Node]]] = {}
        self.parses = 0
        """How often the file was composed from its start (for tests)."""

    def locate(
        self, document: Position, path: Sequence[str | int], *, key: bool = False
    ) -> Position:
        """Where the value at `path` inside the document starting at `document` is
        written. `key=True` points at the key rather than its value (an unknown
        field). A path that leaves the document (a missing field) stops at the
        deepest key that exists."""
        found = self._document(document)
        if found is None:
            return document
        node, line_offset = found
        at = self._walk(node, path, key=key)
        return Position(at.line + line_offset, at.column)

    def _document(self, document: Position) -> tuple[Node, int] | None:
        current = self._current
        if current is not None and current[0] == document:
            return current[1], current[2]
        from_start = self._documents is None or current is None or not current[0] < document
        if from_start:
            self._restart()
        for _ in range(1 if from_start else 2):  # on from here; then from the start
            assert self._documents is not None
            for item in self._documents:
                if isinstance(item, Problem):
                    continue
                node, line_offset = item
                if node is None:
                    continue
                at = _mark(node, line_offset)
                self._current, self._keys = (at, node, line_offset), {}
                if at == document:
                    return node, line_offset
                if document < at:
                    break  # no document starts there
            self._restart()
        return None

    def _restart(self) -> None:
        self._documents = _iter_documents(self._data, "", self._limits)
        self._current, self._keys = None, {}
        self.parses += 1

    def _walk(self, node: Node, path: Sequence[str | int], *, key: bool) -> Position:
        anchor = node  # where a missing step is shown: the key of its parent
        for step in path:
            found: tuple[Node, Node] | None = None
            if isinstance(node, MappingNode):
                found = self._find_key(node, step)
            elif (
                isinstance(node, SequenceNode)
                and isinstance(step, int)
                and 0 <= step < len(node.value)
            ):
                found = (node.value[step], node.value[step])
            if found is None:
                return _mark(anchor, 0)
            anchor, node = found
        return _mark(anchor if key else node, 0)

    def _find_key(self, node: MappingNode, step: str | int) -> tuple[Node, Node] | None:
        keys = self._keys.get(id(node))
        if keys is None:
            keys = self._keys[id(node)] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE:
                    keys.setdefault(key_node.value, (key_node, value_node))
        hit = keys.get(str(step))
        if hit is not None:
            return hit
        for key_node, value_node in node.value:  # then keys brought in by '<<'
            if key_node.tag != _MERGE:
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, MappingNode):
                    hit = self._find_key(source, step)
                    if hit is not None:
                        return hit
        return None


def locate(
    data: bytes,
    document: Position,
    path: Sequence[str | int],
    *,
    key: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Position:
    """Where the value at `path` is written (one problem; `NodeIndex` for many)."""
    return NodeIndex(data, limits).locate(document, path, key=key)
