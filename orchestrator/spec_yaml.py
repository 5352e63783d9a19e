"""A strict, bounded YAML reader for sweep specs. Pure: imports only PyYAML.

`load(text)` gives plain values: str, int, float, bool, None, lists and mappings with
string keys, and nothing else. Everything else is a `YamlError` that names the key
path (`grid.batch_size[1]`), so the spec's validator never meets a date, bytes or a
set, and the CLI prints one line:

- Size is bounded before any Python value is built: the node graph is composed first,
  and each node's expanded size (an alias counts each time it is used) and depth are
  computed as it completes, memoised per node. An alias bomb ("billion laughs") or a
  self-referencing alias is refused after reading its few lines, never expanded.
- A mapping that repeats a key is an error naming the key and both lines (PyYAML keeps
  the last one silently).
- Dates and timestamps, `!!binary`, `!!set`, `!!omap`, unknown tags, integers beyond
  64 bits and non-finite floats are refused by key path.

Limits (see `limit`): `STEPSCOPE_MAX_SPEC_BYTES` (default 256 KiB) and
`STEPSCOPE_MAX_SPEC_NODES` (default 50,000 values after alias expansion); nesting is
at most `MAX_DEPTH` levels.
"""

from __future__ import annotations

import math
import os

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from stepscope.errors import StepscopeError
from stepscope.workloads.params import INT64_MAX, INT64_MIN, brief

#: Defaults of the limits a user may raise with an environment variable of the same name.
DEFAULT_LIMITS = {
    "STEPSCOPE_MAX_SPEC_BYTES": 256 * 1024,  # a large spec is a few KiB
    "STEPSCOPE_MAX_SPEC_NODES": 50_000,  # values in the spec, aliases expanded: 10,000 trials need ~20,000
    "STEPSCOPE_MAX_TRIALS": 10_000,  # trials one spec expands to (grid x GPU types x repeats)
    "STEPSCOPE_MAX_EXCLUDE": 1_000,  # entries of `exclude`
}
#: How deeply lists and mappings may nest (aliases expanded). A spec needs 4 levels.
MAX_DEPTH = 32
#: The longest key (parameter name) a mapping may have.
MAX_KEY_CHARS = 100

_TAG = "tag:yaml.org,2002:"
_SCALARS = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null")}
_KINDS = {f"{_TAG}int": "an integer", f"{_TAG}float": "a number", f"{_TAG}bool": "true/false",
          f"{_TAG}null": "null", f"{_TAG}timestamp": "a date"}


class YamlError(StepscopeError, ValueError):
    """The spec's YAML is malformed, too big or holds a value a spec cannot have.
    `key` is the path to it ("" for the whole document)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


#: The largest value a limit may be raised to (2**40): far above any real spec, and small
#: enough for every use (a read size, a count) to stay a machine-sized integer.
_LIMIT_CEILING = 2**40


def limit(name: str) -> int:
    """The limit `name` (a key of DEFAULT_LIMITS): the environment variable of that
    name when set, else the default. Read at each call, so a test or a user can raise it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return DEFAULT_LIMITS[name]
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if not 1 <= value <= _LIMIT_CEILING:
        raise YamlError("", f"{name}={brief(text)} in the environment: expected a positive integer "
                            f"up to {count(_LIMIT_CEILING)}")
    return value


def count(n: int) -> str:
    """A count as a message shows it: 1,234,567, or 1.2e+30 beyond 15 digits."""
    return f"{n:,}" if n < 10**15 else f"{float(n):.1e}"


def load(text: str) -> object:
    """The one YAML document in `text` as plain values (None when it is empty).
    Raises YamlError for what a spec cannot hold, yaml.YAMLError for malformed YAML."""
    loader = _Loader(text, limit("STEPSCOPE_MAX_SPEC_NODES"))
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    return None if node is None else _Builder().build(node, "")


def _line(node_or_event: object) -> int:
    mark = getattr(node_or_event, "start_mark", None)
    return mark.line + 1 if mark is not None else 0


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Parser(Composer, CParser, Resolver):  # type: ignore[misc]
        """libyaml's parser (several times faster than PyYAML's own, and as strict) under
        PyYAML's composer and resolver: the ones SafeLoader has, so the nodes are alike."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            Composer.__init__(self)
            Resolver.__init__(self)

else:  # PyYAML built without libyaml
    _Parser = yaml.SafeLoader  # type: ignore[misc,assignment]


class _Loader(_Parser):
    """SafeLoader's composer and resolver, measuring the node graph as it is composed.
    No constructor runs: `_Builder` turns the measured graph into values."""

    def __init__(self, text: str, max_nodes: int) -> None:
        super().__init__(text)
        self.max_nodes = max_nodes
        self.depth = 0  # collections open around the node being composed
        self.composed = 0  # nodes composed so far (each alias's target once)
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)

    def compose_node(self, parent: Node | None, index: object) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # ComposerError for an undefined alias
            if id(node) not in self.sizes:  # its anchor is still open: the alias is inside it
                raise YamlError("", f"line {_line(event)}: alias *{brief(event.anchor, 40)[1:-1]} is used inside "
                                    "the value it names; a spec cannot refer to itself")
            return node
        self.depth += 1
        self.composed += 1
        if self.depth > MAX_DEPTH:
            raise YamlError("", f"line {_line(event)}: lists and mappings nested more than {MAX_DEPTH} deep; "
                                "a spec needs a few levels")
        if self.composed > self.max_nodes:
            raise self._too_big(event, self.composed)
        node = super().compose_node(parent, index)
        self.depth -= 1
        self._measure(node)
        return node

    def _measure(self, node: Node) -> None:
        size, depth = 1, 1
        if not isinstance(node, ScalarNode):
            children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
            for child in children:
                s, d = self.sizes[id(child)]
                size += s
                depth = max(depth, d + 1)
        if depth > MAX_DEPTH:
            raise YamlError("", f"line {_line(node)}: lists and mappings nested more than {MAX_DEPTH} deep "
                                "(aliases expanded); a spec needs a few levels")
        if size > self.max_nodes:
            raise self._too_big(node, size)
        self.sizes[id(node)] = (size, depth)

    def _too_big(self, where: object, size: int) -> YamlError:
        return YamlError("", f"line {_line(where)}: {count(size)} YAML values (an alias counts each time it is "
                             f"used), above the limit of {count(self.max_nodes)}; write a smaller spec, or raise "
                             "the limit with STEPSCOPE_MAX_SPEC_NODES")


class _Builder:
    """Turns a measured node graph into plain values. A node reached through several
    aliases becomes one shared value; recursion is bounded by MAX_DEPTH."""

    def __init__(self) -> None:
        self.built: dict[int, object] = {}
        self.constructor = yaml.SafeLoader.__new__(yaml.SafeLoader)  # only its scalar methods are used

    def build(self, node: Node, path: str) -> object:
        done = self.built.get(id(node), _MISSING)
        if done is not _MISSING:
            return done
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
        elif isinstance(node, SequenceNode):
            self.expect_tag(node, f"{_TAG}seq", path, "list")
            value = [self.build(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        else:
            self.expect_tag(node, f"{_TAG}map", path, "mapping")
            value = self.mapping(node, path)
        self.built[id(node)] = value
        return value

    def expect_tag(self, node: Node, tag: str, path: str, kind: str) -> None:
        if node.tag != tag:
            raise YamlError(path, f"line {_line(node)}: the YAML tag {_short(node.tag)} is not supported; "
                                  f"write a plain {kind}")

    def scalar(self, node: ScalarNode, path: str) -> object:
        tag, text = node.tag, node.value
        where = f"line {_line(node)}: {brief(text)}"
        if tag == f"{_TAG}timestamp":
            raise YamlError(path, f"{where} reads as a date; a spec holds numbers, strings and true/false: "
                                  "quote it to use it as a string")
        if tag not in _SCALARS:
            raise YamlError(path, f"line {_line(node)}: the YAML tag {_short(tag)} is not supported; "
                                  "write a plain number, string, true/false or list")
        if tag == f"{_TAG}str":
            return text
        if tag == f"{_TAG}int" and len(text) > 40:  # int() of thousands of digits is refused (or slow)
            raise YamlError(path, f"{where} is too large; integers must fit in 64 bits")
        try:
            value = _construct(self.constructor, node)
        except Exception:  # PyYAML's own reading of `!!bool maybe` (KeyError), `!!int ""` (IndexError)...
            raise YamlError(path, f"{where} cannot be read as {_KINDS[tag]}; write a plain value (no tag), "
                                  "quoted to make it a string") from None
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise YamlError(path, f"{where} does not fit in 64 bits; use a value between {INT64_MIN} and {INT64_MAX}")
        if isinstance(value, float) and not math.isfinite(value):
            raise YamlError(path, f"{where} is not a finite number")
        return value

    def mapping(self, node: MappingNode, path: str) -> dict[str, object]:
        merged: dict[str, object] = {}
        out: dict[str, object] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == f"{_TAG}merge":
                key = "<<"
            else:
                key = self.key(key_node, path)
            if key in lines:
                raise YamlError(_join(path, key), f"the key is repeated at line {_line(key_node)} (first at line "
                                                  f"{lines[key]}); keep one")
            lines[key] = _line(key_node)
            if key == "<<":
                merged = self.merge(value_node, _join(path, key))
            else:
                out[key] = self.build(value_node, _join(path, key))
        return {**merged, **out} if merged else out

    def key(self, node: Node, path: str) -> str:
        if not isinstance(node, ScalarNode):
            raise YamlError(path, f"line {_line(node)}: a key must be a name, not a list or mapping")
        if node.tag != f"{_TAG}str":
            kind = _KINDS.get(node.tag, f"the tag {_short(node.tag)}")
            why = " (YAML reads yes/no/on/off as true/false)" if kind == "true/false" else ""
            raise YamlError(path, f"line {_line(node)}: the key {brief(node.value)} reads as {kind}, not a "
                                  f"name{why}; quote it")
        key = node.value
        if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
            raise YamlError(path, f"line {_line(node)}: the key {brief(key)} is not a name: give 1 to "
                                  f"{MAX_KEY_CHARS} printable characters")
        return key

    def merge(self, node: Node, path: str) -> dict[str, object]:
        """`<<: *base` or `<<: [*a, *b]`: the mappings' keys, earlier ones first; keys
        written beside `<<` win (YAML's merge key)."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        if not all(isinstance(s, MappingNode) for s in sources):
            raise YamlError(path, f"line {_line(node)}: a merge key takes a mapping or a list of mappings")
        merged: dict[str, object] = {}
        for source in reversed(sources):
            merged.update(self.build(source, path))
        return merged


_MISSING = object()


def _construct(constructor: yaml.SafeLoader, node: ScalarNode) -> object:
    method = {
        f"{_TAG}int": constructor.construct_yaml_int,
        f"{_TAG}float": constructor.construct_yaml_float,
        f"{_TAG}bool": constructor.construct_yaml_bool,
        f"{_TAG}null": constructor.construct_yaml_null,
    }[node.tag]
    return method(node)


def _short(tag: str | None) -> str:
    tag = tag or "?"
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else brief(tag, 40)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
