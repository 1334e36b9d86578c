"""Recipe files: YAML with line numbers, `--set` overrides, one-line errors, the resolved copy.

PyYAML's composer keeps the position of every node, so after pydantic rejects a value we can
say where it was written: `bsrn_s_x4.yaml:12: train.optimizer.beta: unknown key (did you mean
'betas'?)`. Duplicate keys, which PyYAML silently resolves to the last one, are errors too.
Floats such as `2e-4` (a string in YAML 1.1) are read as numbers, as YAML 1.2 and users expect.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from slimsr.train.config import ConfigError, TrainConfig

SchemaT = TypeVar("SchemaT", bound=BaseModel)

Loc = tuple[str | int, ...]

_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)$"
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` and `2E+5` as floats."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """The document and the 1-based line of every key / list item in it."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Loc, int] = {}
        _index(node, (), lines, source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({exc})") from None
    finally:
        loader.dispose()


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{source}:{line}: {_dotted((*loc, key))}: duplicate key")
            seen.add(key)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _index(value_node, (*loc, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _index(item, (*loc, i), lines, source)


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- overrides ------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[Loc, Any]:
    """`train.lr=2e-4` -> (("train", "lr"), 0.0002); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. train.lr=2e-4")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None
    loc: Loc = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return loc, value


def apply_override(data: dict[str, Any], loc: Loc, value: Any) -> None:
    node: Any = data
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"--set {_dotted(loc)}: {_dotted(loc[: i + 1])} does not exist")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {_dotted(loc)}: {_dotted(loc[:i])} is not a section")
        node = node.setdefault(part, {})
    last = loc[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"--set {_dotted(loc)}: no such list item")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {_dotted(loc)}: {_dotted(loc[:-1])} is not a section")


# -- errors ---------------------------------------------------------------------------------------


def _all_field_names(model: type[BaseModel], out: set[str] | None = None) -> set[str]:
    out = set() if out is None else out
    for name, field in model.model_fields.items():
        out.add(name)
        for sub in _model_types(field.annotation):
            if sub.__name__ not in out:
                out.add(sub.__name__)
                _all_field_names(sub, out)
    return {n for n in out if not n[:1].isupper()}


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _model_types(arg)
    meta = getattr(annotation, "__metadata__", None)
    if meta is not None:
        found += _model_types(getattr(annotation, "__origin__", None))
    return found


def _user_loc(loc: Loc, data: Any) -> Loc:
    """`loc` without the union tags pydantic inserts (`train.optimizer.adam.eps` -> no `adam`)."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        is_tag = (
            i + 1 < len(loc)
            and isinstance(node, dict)
            and part not in node
            and node.get("type") == part
        )
        if is_tag:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _where(loc: Loc, lines: Mapping[Loc, int], overridden: Sequence[Loc], source: str) -> str:
    """`file:line` of the deepest part of `loc` written in the file, or the `--set` behind it."""
    for o in overridden:
        if loc[: len(o)] == o or o[: len(loc)] == loc:
            return f"--set {_dotted(o)}"
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in lines:
            return f"{source}:{lines[loc[:depth]]}"
    return source


def _format_error(
    err: Mapping[str, Any],
    data: Any,
    lines: Mapping[Loc, int],
    overridden: Sequence[Loc],
    source: str,
) -> str:
    loc = _user_loc(tuple(err["loc"]), data)
    kind, msg = err["type"], str(err["msg"])
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if not loc:  # a cross-field check: its message starts with the dotted key it is about
        return _located(msg, lines, overridden, source)
    where = _where(loc, lines, overridden, source)
    key = _dotted(loc)
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _all_field_names(TrainConfig), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: {key}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: {key}: required key is missing"
    value = err.get("input")
    plain = isinstance(value, dict | list) or value is None or kind == "value_error"
    shown = "" if plain else f" (got {value!r})"
    return f"{where}: {key}: {msg}{shown}"


def _located(msg: str, lines: Mapping[Loc, int], overridden: Sequence[Loc], source: str) -> str:
    """`file:line: msg` for a message that starts with the dotted key it is about."""
    first = msg.split(" ", 1)[0]
    key_loc: Loc = tuple(int(p) if p.isdigit() else p for p in first.split("."))
    return f"{_where(key_loc, lines, overridden, source)}: {msg}"


def validation_message(
    exc: ValidationError,
    data: Any,
    lines: Mapping[Loc, int],
    overridden: Sequence[Loc] = (),
    source: str = "config",
) -> str:
    """One line for the first problem pydantic found (and how many others there are)."""
    errors = exc.errors(include_url=False)
    first = _format_error(errors[0], data, lines, overridden, source)
    return first + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else "")


# -- loading --------------------------------------------------------------------------------------

_PATH_KEYS: tuple[Loc, ...] = (
    ("output_dir",),
    ("model", "pretrained"),
    ("distill", "teacher"),
    ("distill", "student_init"),  # compression recipes
    ("distill", "cache_dir"),
    ("data", "val", "root"),
    ("data", "val", "hr"),
    ("data", "val", "lr"),
)


def resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative paths absolute (relative to `base`, the working directory)."""

    def fix(container: Any, key: str | int) -> None:
        try:
            value = container[key]
        except (KeyError, IndexError, TypeError):
            return
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            container[key] = str((base / Path(value).expanduser()).resolve())
        elif isinstance(value, str) and value:
            container[key] = str(Path(value).expanduser())

    for loc in _PATH_KEYS:
        node: Any = data
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            fix(node, loc[-1])
    if isinstance(data.get("data"), dict) and isinstance(data["data"].get("train"), dict):
        sources = data["data"]["train"].get("sources")
        if isinstance(sources, list):
            for item in sources:
                if isinstance(item, dict):
                    fix(item, "hr")
                    fix(item, "lr")


def load_config(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    check_paths: bool = True,
    base_dir: Path | None = None,
) -> TrainConfig:
    """A validated `TrainConfig` from a YAML file (or a dict) plus `--set` overrides.

    Relative paths are resolved against `base_dir` (default: the working directory), so the
    resolved config saved in the run folder still works from anywhere. Raises `ConfigError`
    with one line naming the file, line and key.
    """
    doc = read_recipe(
        source, overrides, base_dir, "a recipe is a YAML mapping of sections (model, data, train)"
    )
    return doc.validate(TrainConfig, check_paths)


@dataclass
class RecipeDocument:
    """A recipe file as parsed, before validation: what error messages need to name places."""

    data: dict[str, Any]
    lines: dict[Loc, int]  # 1-based line of every key / list item
    name: str  # the file, or "config" for a dict
    overridden: list[Loc]  # keys set by `--set`

    def error_message(self, exc: ValidationError) -> str:
        return validation_message(exc, self.data, self.lines, self.overridden, self.name)

    def validate(self, schema: type[SchemaT], check_paths: bool) -> SchemaT:
        """The document as `schema`, or a one-line `ConfigError` naming file, line and key."""
        try:
            config = schema.model_validate(self.data, context={"check_paths": check_paths})
        except ValidationError as exc:
            raise ConfigError(self.error_message(exc)) from None
        if isinstance(config, TrainConfig):
            try:
                check_model(config)
            except ValueError as exc:
                raise ConfigError(
                    _located(str(exc), self.lines, self.overridden, self.name)
                ) from None
        return config


def check_model(config: TrainConfig) -> None:
    """The recipe against its network, built: QAT needs a plain-conv graph (refused naming
    the op). Here rather than in `train.config`, which stays data-only (no model code).

    Raises `ValueError` whose message starts with the dotted key it is about.
    """
    if config.quant is None or not config.quant.qat:
        return
    from slimsr.factory import create_model
    from slimsr.quant.graph import QuantError, plain_graph

    try:
        net = create_model(config.model.name, config.model.scale, **config.model.kwargs)
    except TypeError:
        return  # bad model.kwargs are reported when the run builds the model
    try:
        plain_graph(net)
    except QuantError as exc:
        raise ValueError(f"quant.qat: {exc}") from None


def read_recipe(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str],
    base_dir: Path | None,
    not_a_mapping: str,
) -> RecipeDocument:
    """Read a recipe (YAML file or dict), apply `--set` overrides and make its relative paths
    absolute against `base_dir` (default: the working directory). Shared by every kind of
    recipe (training, compression); `not_a_mapping` ends the error for a non-mapping document.
    """
    base = Path.cwd() if base_dir is None else Path(base_dir)
    if isinstance(source, Mapping):
        data: Any = json.loads(json.dumps(dict(source), default=str))
        lines: dict[Loc, int] = {}
        name = "config"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the recipe ({exc})") from None
        data, lines = parse_yaml_with_lines(text, name)
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: {not_a_mapping}")
    overridden: list[Loc] = []
    for text in overrides:
        loc, value = parse_override(text)
        apply_override(data, loc, value)
        overridden.append(loc)
    resolve_paths(data, base)
    return RecipeDocument(data, lines, name, overridden)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_hash(config: TrainConfig) -> str:
    """sha256 of the resolved config (what the run was trained with), key order independent."""
    text = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dump_config(config: TrainConfig) -> str:
    """The resolved recipe as YAML: every default written out, paths absolute."""
    header = "# resolved by slimsr train: every default written out; load with --resume\n"
    return header + yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)


def config_changes(a: TrainConfig, b: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every key whose value differs, sorted."""

    def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for k, v in obj.items():
                out.update(flat(v, f"{prefix}.{k}" if prefix else k))
            return out
        return {prefix: obj}

    fa, fb = flat(config_to_dict(a)), flat(config_to_dict(b))
    keys = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    return [(k, fa.get(k), fb.get(k)) for k in keys]


def config_diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    return [key for key, _, _ in config_changes(a, b)]
