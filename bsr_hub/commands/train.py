"""The flags of train.py: the typed training config as argparse flags.

`accelerate launch train.py` parses its command line here (`load_train_config`): `--scale`, `--seed`, `--resume`,
and one `--section.setting` flag per field of `training.TrainConfig`'s sections, read from their annotations and
attribute docstrings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from collections.abc import Sequence
from typing import Any


def _none_or(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def train_parser() -> argparse.ArgumentParser:
    """`train.py`'s flags: `--scale`, `--seed`, `--resume`, and one `--section.setting` per setting of each typed
    section (`--optim.max_steps 400`), each with its bsr_hub 0.1 flat spelling as an alias (`--max_steps 400`).
    Only flags actually given override the recipe (default SUPPRESS); each arrives under its dotted name."""
    import dataclasses

    from ..training import FLAT_NAMES, OLD_SAMPLER_NAMES, RUN_WIDE, SECTIONS, TrainConfig

    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a BSR model (single process, or several with `accelerate launch`). Settings come from "
                    "the dataclass defaults, then a YAML recipe (--config; one mapping per section, e.g. "
                    "`optim: {max_steps: 400}`), then these flags.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="a YAML recipe (configs/*.yaml); flags given here override it")
    old_names = {new: old for old, new in FLAT_NAMES.items() if old != "sampler"}
    run, docs = parser.add_argument_group("the run"), field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SECTIONS:
            _add_setting(run, TrainConfig, f.name, f.name, (), docs.get(f.name))
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section}: {_first_line(cls.__doc__)}")
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in RUN_WIDE.get(section, ()):
                continue  # the run's own --scale and --seed
            dotted = f"{section}.{f.name}"
            aliases = (old_names[dotted],) if dotted in old_names else ()
            _add_setting(group, cls, f.name, dotted, aliases, docs.get(f.name))
    parser.add_argument("--sampler", choices=tuple(OLD_SAMPLER_NAMES), dest="sampler",
                        help="the bsr_hub 0.1 spelling of --rfs.mode (rfs-indexed = indexed, ...)")
    return parser


def _first_line(doc: str | None) -> str:
    """A section's title: its docstring up to the first full stop or colon."""
    return re.split(r"[.:]", " ".join((doc or "").split()), maxsplit=1)[0]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (the attribute docstrings its source holds), for
    --help: one place says what a setting means, the code."""
    import ast
    import inspect
    import textwrap

    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError, IndexError, AttributeError):
        return {}
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split()).replace("%", "%%")
    return docs


def _add_setting(group: Any, cls: type, name: str, dotted: str, aliases: tuple[str, ...], doc: str | None) -> None:
    """One flag per setting, parsed by its annotation: bool -> --x/--no-x, list -> several values (a repeated
    flag adds to them), a mapping or a nested section (degradation_mix) -> JSON, `| None` -> also accepts "none".
    A union is parsed as its first type (`list[str] | str`: a list, which the section may turn back into one
    string)."""
    import dataclasses
    import typing

    from ..training import field_type

    kind, optional = field_type(cls, name)
    flags = [f"--{dotted}", *(f"--{a}" for a in aliases)]
    origin = typing.get_origin(kind)
    if kind is bool:
        group.add_argument(*flags, dest=dotted, action=argparse.BooleanOptionalAction, help=doc)
    elif origin in (list, tuple):
        item = typing.get_args(kind)[0]
        group.add_argument(*flags, dest=dotted, nargs="*", action="extend", type=item, metavar=item.__name__.upper(),
                           help=doc)
    elif origin is dict or dataclasses.is_dataclass(kind):
        group.add_argument(*flags, dest=dotted, type=_none_or(json.loads) if optional else json.loads,
                           metavar="JSON", help=f"(a JSON object) {doc or ''}")
    elif origin is typing.Literal:
        group.add_argument(*flags, dest=dotted, choices=typing.get_args(kind), help=doc)
    else:
        group.add_argument(*flags, dest=dotted, type=_none_or(kind) if optional else kind,
                           metavar=kind.__name__.upper(), help=doc)


def load_train_config(argv: Sequence[str] | None = None) -> tuple[Any, str | None]:
    """`train.py`'s command line -> (TrainConfig, recipe path): defaults, then the YAML recipe, then flags."""
    from ..training import resolve_config

    args = vars(train_parser().parse_args(argv))
    recipe = args.pop("config", None)
    return resolve_config(recipe, args), recipe
