"""absl flags generated from the config dataclasses (one flag per field)."""

from __future__ import annotations


from absl import flags

from mtpsl_tf.config import ExperimentConfig, section_fields

_DEFINERS = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer,
             "float": flags.DEFINE_float, "bool": flags.DEFINE_boolean}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per config field on `flag_values`."""
    for _, field in section_fields():
        define = _DEFINERS[str(field.type)]
        define(field.name, field.default, field.metadata["help"], flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ExperimentConfig:
    """Binds parsed flags to a validated ExperimentConfig."""
    config = ExperimentConfig()
    for section, field in section_fields():
        setattr(getattr(config, section), field.name, flag_values[field.name].value)
    return config.validate()


def config_from_flagfile(path: str, extra_args=()) -> ExperimentConfig:
    """Parses a flagfile into a config without touching the global FLAGS (used by tests)."""
    values = flags.FlagValues()
    define_flags(values)
    values(["prog", f"--flagfile={path}", *extra_args])
    return config_from_flags(values)
