"""Reading a study file, bounded: a hostile or careless file is one line and exit 2, quickly, in little memory.

`read_text(path)` reads at most MAX_STUDY_BYTES (a folder, a missing file, a FIFO or an unreadable file each say so);
`load_mapping(text, source)` parses YAML with three bounds (lorascope.limits says where each number comes from):

  nesting   at most MAX_YAML_DEPTH levels (the composer is recursive: 100,000 `[` was a 3,000-line RecursionError)
  aliases   expanded within MAX_YAML_NODES nodes (a 4 KB file of nine levels of anchors expands to billions of
            nodes: `validate` grew past 10 GB); a recursive alias is refused
  size      MAX_STUDY_BYTES of text

The parser is libyaml's event parser when PyYAML has it (fast; its own composer is recursive C code that crashes the
process on deep nesting, so it is not used) or PyYAML's, with PyYAML's composer (depth-checked here), safe
constructor and resolver: the same values `yaml.safe_load` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

from lorascope.errors import ConfigError
from lorascope.limits import MAX_STUDY_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES

if yaml.__with_libyaml__:
    from yaml.cyaml import CParser as _EventParser
else:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _EventParser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class _Refused(Exception):
    """A bound was hit: the message is the reason, one line."""


class _BoundedLoader(Composer, _EventParser, SafeConstructor, Resolver):
    def __init__(self, stream: str) -> None:
        _EventParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"line {mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels (a study's deepest "
                               "field is 6 levels down)")  # fmt: skip
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: Node) -> int:
    """Nodes of the document with every alias written out; refuses past MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels
    and a recursive alias. Linear in the composed graph: a node shared through aliases is measured once."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, height)
    active: set[int] = set()

    def measure(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in memo:  # an alias of a node measured before (an anchor comes before its aliases)
            count, height = memo[key]
            if depth + height - 1 > MAX_YAML_DEPTH:
                raise _Refused(f"line {node.start_mark.line + 1}: an alias nests the document deeper than "
                               f"{MAX_YAML_DEPTH} levels")  # fmt: skip
            return count, height
        if key in active:
            raise _Refused(f"line {node.start_mark.line + 1}: a recursive alias (an anchor used inside itself)")
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        if depth > MAX_YAML_DEPTH:
            raise _Refused(f"line {node.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels")
        active.add(key)
        count, height = 1, 1
        for child in children:
            c, h = measure(child, depth + 1)
            count, height = count + c, max(height, h + 1)
            if count > MAX_YAML_NODES:
                raise _Refused(f"aliases expand the document past {MAX_YAML_NODES:,} values (from line "
                               f"{node.start_mark.line + 1}); write the study out without anchors and aliases")  # fmt: skip
        active.discard(key)
        memo[key] = (count, height)
        return count, height

    return measure(root, 1)[0]


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where, then what."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x)
        return f"{where}{what}"
    return " ".join(str(exc).split())


def load_mapping(text: str, source: str, max_bytes: int | None = MAX_STUDY_BYTES) -> dict[str, Any]:
    """The study file's top-level mapping, parsed within the bounds above (ConfigError, one line, otherwise).
    `max_bytes=None`: no size bound (a run's frozen study, written out by lorascope, may be longer than its file)."""
    if max_bytes is not None:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ConfigError(f"{source}: {size:,} bytes, over the limit of {max_bytes:,} for a study file (it travels "
                              "to the pods in a ConfigMap, which holds at most 1 MiB)")  # fmt: skip
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            data = None
        else:
            _expanded_size(node)
            data = loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError(f"{source}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(exc)}") from None
    except RecursionError:  # a bound above should have fired first; never a 3,000-line traceback
        raise ConfigError(f"{source}: refused: nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_text(path: str | Path) -> str:
    """The study file's text: at most MAX_STUDY_BYTES read; a folder, a missing, special or unreadable file, a file
    over the limit or one that is not UTF-8 is a ConfigError saying which."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"study file {str(p)!r} is a folder, not a file (give the study's .yaml file, e.g. "
                          "jobs/smoke.yaml)")  # fmt: skip
    if not p.exists():
        raise ConfigError(f"study file {str(p)!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"study file {str(p)!r} is not a regular file (a device, pipe or socket); give a .yaml file")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_STUDY_BYTES + 1)
            size = p.stat().st_size
    except OSError as exc:
        raise ConfigError(f"study file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_STUDY_BYTES:
        raise ConfigError(f"{p}: {max(size, len(raw)):,} bytes, over the limit of {MAX_STUDY_BYTES:,} for a study file "
                          "(it travels to the pods in a ConfigMap, which holds at most 1 MiB)")  # fmt: skip
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
