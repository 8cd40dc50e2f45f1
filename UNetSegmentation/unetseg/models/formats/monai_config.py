"""A bundle's inference config through MONAI's own `monai.bundle.ConfigParser`, with nothing in it allowed to run.

References, relative ids, ``%`` macros of the same file and ``$`` expressions are MONAI's, not re-implemented
here. ``$`` strings are Python that MONAI ``eval()``s, so every expression that resolving a value would evaluate
(the value and everything it refers to, as MONAI's resolver finds them) is checked first with `check_expression`:
constants, references, arithmetic, comparisons, list/dict literals, a few pure builtins (``len``, ``min``,
``max``…) and ``monai.utils.CommonKeys.X`` / ``torch.float32``-style dtype names only — no other calls,
attributes, comprehensions or lambdas. Import statements (``"imports": ["$import glob"]``) are dropped before
parsing (MONAI would import them on every resolve) and listed; ``%`` macros that name another file are refused
(MONAI would open that path relative to the working directory). `plain` turns resolved values into JSON data.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from unetseg.models.formats.monai_files import BundleError

NON_ARG_KEYS = ("_target_", "_desc_", "_requires_", "_disabled_", "_mode_")
"""Keys of a config component that are MONAI's own, not arguments of the class it names."""
_REF_VARS = "__local_refs"  # MONAI's ReferenceResolver._vars: "@id" in an expression becomes __local_refs['id']
_PURE_BUILTINS = ("len", "min", "max", "abs", "round", "int", "float", "bool", "str", "tuple", "list")
_DTYPE_NAMES = re.compile(r"^(bool_?|u?int(8|16|32|64)|float(16|32|64)|bfloat16|half|float|double)$")
_MAX_EXPRESSION_NODES = 200
_MAX_EXPRESSION_INT = 10**6
_MAX_MULTIPLICATIONS = 2
"""Size limits on expressions (nodes, numbers, multiplications) keep them small; a hostile expression can still
ask for a large list ("[0] * 10**6 * 10**6" fails with MemoryError), but never run code."""


def check_expression(expression: str, where: str) -> None:
    """Refuse a ``$`` expression (as MONAI's resolver hands it over, references already ``__local_refs['id']``)
    unless it only combines constants, references and plain data — so ``eval()`` cannot call anything."""
    body = expression[1:] if expression.startswith("$") else expression
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as e:
        raise BundleError(f"Refusing the expression {expression!r} at {where}: not Python ({e.msg}).") from e
    nodes = list(ast.walk(tree))
    problem = None
    if len(nodes) > _MAX_EXPRESSION_NODES:
        problem = "too long"
    elif sum(isinstance(n, ast.Mult) for n in nodes) > _MAX_MULTIPLICATIONS:
        problem = f"more than {_MAX_MULTIPLICATIONS} multiplications"
    allowed_names = _allowed_name_nodes(tree)
    for node in nodes:
        if problem:
            break
        problem = _expression_node_problem(node, allowed_names)
    if problem:
        raise BundleError(
            f"Refusing the expression {expression!r} at {where}: {problem}. Bundle expressions are Python that "
            "MONAI would eval(); this extension evaluates only constants, references (@id), arithmetic, "
            f"comparisons, list/dict literals, {'/'.join(_PURE_BUILTINS)} and monai.utils.CommonKeys / dtype names."
        )


def _allowed_name_nodes(tree: ast.AST) -> set[int]:
    """ids of the Name/Attribute nodes that are allowed where they stand (references, builtins, constants)."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == _REF_VARS
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            allowed.add(id(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _PURE_BUILTINS:
            allowed.add(id(node.func))
        elif isinstance(node, ast.Attribute) and _constant_attribute(node):
            allowed.update(id(n) for n in ast.walk(node))
    return allowed


def _constant_attribute(node: ast.Attribute) -> bool:
    """``monai.utils.CommonKeys.IMAGE``-style key names and ``torch.float32``-style dtype names."""
    parts, current = [], node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return False
    dotted = [current.id, *reversed(parts)]
    if dotted[:3] == ["monai", "utils", "CommonKeys"] and len(dotted) == 4:
        return dotted[3].isupper()
    return len(dotted) == 2 and dotted[0] in ("torch", "numpy", "np") and bool(_DTYPE_NAMES.match(dotted[1]))


_SAFE_NODES = (
    ast.Expression,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.Subscript,
    ast.Slice,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Attribute,
    ast.Load,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
)


def _expression_node_problem(node: ast.AST, allowed_names: set[int]) -> str | None:
    if not isinstance(node, _SAFE_NODES):
        return f"it uses {type(node).__name__}"
    if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in allowed_names:
        return f"it names {ast.unparse(node)!r}"
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in _PURE_BUILTINS):
            return f"it calls {ast.unparse(node.func)!r}"
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            return "it calls a function with keyword or starred arguments"
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_EXPRESSION_INT:
            return f"it holds the large number {value}"
        if isinstance(value, (str, bytes)) and len(value) > 10_000:
            return "it holds a very long string"
    return None


def _sanitize(config: Any, where: str, dropped: list[str]) -> Any:
    """A copy of the raw config without import statements (MONAI imports them on every resolve); file macros
    (``%other.json#id``) are refused: MONAI would open that path relative to the working directory."""
    from monai.bundle import ConfigParser
    from monai.bundle.config_item import ConfigExpression

    if isinstance(config, dict):
        return {k: _sanitize(v, f"{where}::{k}" if where else str(k), dropped) for k, v in config.items()}
    if isinstance(config, list):
        return [_sanitize(v, f"{where}::{i}", dropped) for i, v in enumerate(config)]
    if isinstance(config, str) and config.startswith("%"):
        path, _ = ConfigParser.split_path_id(config[1:])
        if path:
            raise BundleError(
                f"Refusing the macro {config!r} at {where}: it reads another file ({path}); this extension reads "
                "only the bundle's own inference config."
            )
    if ConfigExpression.is_expression(config) and "import" in config:
        try:
            is_import = ConfigExpression.is_import_statement(config)
        except SyntaxError:
            is_import = True  # MONAI's resolver would fail on it anyway; it cannot be needed
        if is_import:
            dropped.append(f"{where}: {config}")
            return None
    return config


class Resolver:
    """MONAI's ConfigParser over the sanitised config, resolving single ids only after checking every
    expression the resolution would evaluate."""

    def __init__(self, config: dict) -> None:
        from monai.bundle import ConfigParser

        self.dropped: list[str] = []
        clean = _sanitize(config, "", self.dropped)
        self.parser = ConfigParser(clean)
        self.raw = clean

    def has(self, id: str) -> bool:
        return id in self.parser

    def get_raw(self, id: str) -> Any:
        return self.parser.get(id)

    def unevaluated(self, id: str) -> Any:
        """``id`` resolved without evaluating or instantiating anything (ConfigItem objects stay as they are)."""
        self.parser.parse(reset=True)
        return self.parser.get_parsed_content(id, instantiate=False, eval_expr=False)

    def resolve(self, id: str, allow_components: bool = True) -> Any:
        """The value of ``id`` with its expressions evaluated and nothing instantiated (components stay
        `ConfigComponent` objects); every expression on the way is checked first."""
        from monai.bundle.config_item import ConfigComponent, ConfigExpression

        self.unevaluated(id)
        for item_id, item in self.parser.ref_resolver.resolved_content.items():
            if isinstance(item, ConfigExpression):
                check_expression(item.get_config(), item_id)
            elif isinstance(item, ConfigComponent) and not allow_components and item_id != id:
                raise BundleError(
                    f"Refusing {id}: it reaches the component {item_id} ({item.get_config().get('_target_')!r}); "
                    "only plain values are allowed there."
                )
        self.parser.parse(reset=True)
        try:
            return self.parser.get_parsed_content(id, instantiate=False, eval_expr=True)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise BundleError(f"The bundle's config cannot resolve {id}: {e}") from e


def plain(value: Any, where: str) -> Any:
    """A resolved value as JSON data (tuples become lists); components and other objects are refused."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BundleError(f"{where} is {value}; only finite numbers are allowed.")
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return plain(value.item(), where)
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: plain(v, f"{where}::{k}") for k, v in value.items()}
    raise BundleError(f"{where} resolves to {type(value).__name__}, not plain data (numbers, strings, lists).")


def truthy(value: Any) -> bool:
    """A config flag as a bool ("true"/"false" strings included)."""
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def plain_default(value: Any) -> Any:
    """An argument default as plain data (MONAI's string enums as their value)."""
    return value.value if hasattr(value, "value") else value


def same_as_default(value: Any, default: Any) -> bool:
    """Whether a resolved argument equals a signature's default (tuples compared as lists)."""
    default = plain_default(default)
    if isinstance(default, tuple):
        default = list(default)
    return value == default


def per_key(value: Any, key_index: int) -> Any:
    """A per-key argument (``mode: ["bilinear", "nearest"]`` for two keys) for our key."""
    if isinstance(value, list) and value and all(isinstance(v, (str, bool)) for v in value):
        return value[min(key_index, len(value) - 1)]
    return value


def concatenated_refs(expression: str) -> list[str] | None:
    """``["a", "b"]`` for ``$__local_refs['a'] + __local_refs['b']``; None for anything else."""
    try:
        node = ast.parse(expression[1:].strip(), mode="eval").body
    except SyntaxError:
        return None
    refs: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            stack += [n.right, n.left]
        elif (
            isinstance(n, ast.Subscript)
            and isinstance(n.value, ast.Name)
            and n.value.id == _REF_VARS
            and isinstance(n.slice, ast.Constant)
        ):
            refs.append(str(n.slice.value))
        else:
            return None
    return refs
