"""absl flags generated from the config dataclasses (one flag per field) and from the options
the registered methods and loss weightings declare (mtpsl_tf/options.py)."""

from __future__ import annotations

from absl import flags

from mtpsl_tf.config import ExperimentConfig, section_fields
from mtpsl_tf.options import iter_option_fields, type_name

_DEFINERS = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer,
             "float": flags.DEFINE_float, "bool": flags.DEFINE_boolean}


def _components():
    """(registry, config attribute) of the component axes whose entries declare options."""
    from mtpsl_tf.methods.base import METHODS
    from mtpsl_tf.weighting.base import WEIGHTINGS

    return ((METHODS, "method"), (WEIGHTINGS, "weighting"))


def _option_fields():
    classes = [registry.get(name) for registry, _ in _components() for name in registry.names()]
    return list(iter_option_fields(classes))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per config field and per component option on `flag_values`."""
    fields = [f for _, f in section_fields()] + _option_fields()
    for field in fields:
        define = _DEFINERS[type_name(field)]
        define(field.name, field.default, field.metadata["help"], flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ExperimentConfig:
    """Binds parsed flags to a validated ExperimentConfig; `options` gets the flags of the
    chosen method's and weighting's options (validated by them)."""
    config = ExperimentConfig()
    for section, field in section_fields():
        setattr(getattr(config, section), field.name, flag_values[field.name].value)
    config.validate()
    for registry, attribute in _components():
        component = registry.get(getattr(config.method, attribute))
        for field in iter_option_fields([component]):
            config.options[field.name] = flag_values[field.name].value
    return validate_options(config)


def validate_options(config: ExperimentConfig) -> ExperimentConfig:
    """Checks the options of the config's method and weighting; raises ValueError naming a flag."""
    from mtpsl_tf.options import resolve_options

    for registry, attribute in _components():
        name = getattr(config.method, attribute)
        component = registry.get(name)
        resolve_options(component.Options, config.options, f"--{attribute}={name}")
    return config


def config_from_flagfile(path: str, extra_args=()) -> ExperimentConfig:
    """Parses a flagfile into a config without touching the global FLAGS (used by tests)."""
    values = flags.FlagValues()
    define_flags(values)
    values(["prog", f"--flagfile={path}", *extra_args])
    return config_from_flags(values)
