"""Label selectors as the Hetzner Cloud API accepts them in `label_selector` query parameters.

Supported expressions, joined by commas (all must match): `key=value`, `key==value`,
`key!=value`, `key` (the label exists), `!key` (it does not), `key in (a,b)` and
`key notin (a,b)`. Anything else is rejected with a ValueError naming the bad expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Labels = Mapping[str, str]
Requirement = Callable[[Labels], bool]

_KEY = r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?"
_EQUALS = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_SET_VALUE = re.compile(rf"^{_VALUE}$")


def split_expressions(selector: str) -> list[str]:
    """Split a selector at the commas that are not inside the parentheses of a set expression."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in label selector {selector!r}")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"unbalanced '(' in label selector {selector!r}")
    parts.append("".join(current).strip())
    return parts


def parse_expression(expression: str) -> Requirement:
    """Turn one selector expression into a predicate over a resource's labels."""
    if match := _EQUALS.match(expression):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _SET.match(expression):
        key, operator, listed = match.groups()
        values = {item.strip() for item in listed.split(",")}
        if not all(_SET_VALUE.match(value) for value in values):
            raise ValueError(f"invalid value in label selector expression {expression!r}")
        if operator == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: labels.get(key) not in values
    if match := _EXISTS.match(expression):
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ValueError(f"invalid label selector expression {expression!r}")


def compile_selector(selector: str) -> Requirement:
    """Return a predicate that is true for labels matching every expression of `selector`."""
    expressions = split_expressions(selector)
    if any(not expression for expression in expressions):
        raise ValueError(f"empty expression in label selector {selector!r}")
    requirements = [parse_expression(expression) for expression in expressions]
    return lambda labels: all(requirement(labels) for requirement in requirements)
