"""Options owned by a component (a training method, a loss weighting): a dataclass whose
fields become absl flags of the same name, so a new component with flags of its own is still
one module (no edit of config.py).

    @dataclasses.dataclass(frozen=True)
    class Options:
        con_weight: float = option(2.0, "Weight of the consistency loss.")

        def validate(self):  # optional: raise ValueError naming the flag
            ...

The values of the options of the components a run uses are kept in
`ExperimentConfig.options` (flag name -> value) and written to config.json.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Mapping, Tuple


def option(default, help: str, **metadata):
    """A dataclass field that is also a flag (type from the annotation, help from `help`)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a component without flags of its own."""


def type_name(field: dataclasses.Field) -> str:
    """"str", "int", "float" or "bool" for a field annotated with that type (a string under
    `from __future__ import annotations`, else the class)."""
    return field.type if isinstance(field.type, str) else field.type.__name__


def option_fields(options_cls) -> Tuple[dataclasses.Field, ...]:
    return dataclasses.fields(options_cls)


def resolve_options(options_cls, values: Mapping[str, Any], owner: str):
    """`options_cls` filled from `values` (flag name -> value; missing names take the field
    defaults), validated. Raises ValueError naming `owner` and the flag on a bad value."""
    kwargs = {f.name: values[f.name] for f in option_fields(options_cls) if f.name in values}
    try:
        options = options_cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{owner}: bad options {sorted(kwargs)}: {err}") from None
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate()
    return options


def choice(flag: str, value: str, choices: Iterable[str]) -> None:
    """Raises ValueError naming `--flag` unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"--{flag}={value!r} is not one of {', '.join(choices)}")


def iter_option_fields(components: Iterable[object]) -> Iterator[dataclasses.Field]:
    """Every option field of the given component classes, each name once (components may
    share an option if they declare it with the same type and default)."""
    seen = {}
    for component in components:
        for f in option_fields(getattr(component, "Options", NoOptions)):
            if f.name in seen:
                other = seen[f.name]
                if (type_name(other), other.default) != (type_name(f), f.default):
                    raise ValueError(f"option --{f.name} is declared twice with different types/defaults")
                continue
            seen[f.name] = f
            yield f
