"""The project's one YAML reader: config files and `key.path=value` overrides.

On top of PyYAML's safe loader it
- reads `2e-5` and `1E8` as numbers (YAML 1.1 wants a dot before the exponent, so
  PyYAML alone reads them as strings; this is the one place that rule lives);
- refuses a key written twice in one mapping (PyYAML keeps the later one silently,
  so a second `training:` block would drop the first without a word);
- refuses documents that expand to more values than any config has ("billion laughs");
- records the line of every key, so a problem can name where its value was written.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import yaml

from plaintune.errors import UserError

MAX_NODES = 100_000  # a real config has a few hundred; aliases can make billions


class InvalidYaml(UserError):
    """Text that is not YAML at all (as opposed to YAML that says something twice or too much)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats (add_implicit_resolver copies the table for this class)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _walk(node: yaml.Node, where: str, lines: dict[str, int], label: str) -> None:
    """Check `node`'s mappings for repeated keys and note each key's line, within a node budget."""
    budget = MAX_NODES
    stack = [(node, where)]
    while stack:
        node, where = stack.pop()
        budget -= 1
        if budget < 0:
            raise UserError(
                f"{label}: expands to more than {MAX_NODES:,} values (YAML anchors and aliases "
                "nested into each other?); write the values out"
            )
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, where))
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                line = key_node.start_mark.line + 1
                dotted = f"{where}.{key}" if where else str(key)
                if key in seen:
                    where_twice = f"line {seen[key]} and line {line}" if seen[key] != line else f"twice on line {line}"
                    raise UserError(
                        f"{label}: {dotted} is written twice ({where_twice}); keep one: YAML would "
                        "silently use the later one"
                    )
                seen[key] = line
                lines.setdefault(dotted, line)
                stack.append((value_node, dotted))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, where) for item in node.value)


def parse(text: str, label: str, prefix: str = "") -> tuple[Any, dict[str, int]]:
    """(the YAML document in `text`, {dotted key: line}). `label` names the text in errors (a file
    path, or an override); `prefix` is the dotted key the document is the value of (an override's)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[str, int] = {}
        _walk(node, prefix, lines, label)
        return loader.construct_document(node), lines
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InvalidYaml(f"{label}{line}: invalid YAML ({problem}); check indentation and quoting") from None
    finally:
        loader.dispose()


def load_value(text: str, label: str, key: str = "") -> Any:
    """One YAML value (the right-hand side of an override of `key`)."""
    return parse(text, label, key)[0]


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def line_of(lines: dict[str, int], dotted: str) -> Optional[int]:
    """The line where `dotted` or the nearest section above it was written."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        line = lines.get(".".join(parts[:end]))
        if line is not None:
            return line
    return None
