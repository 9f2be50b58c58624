"""Command-line helpers shared by main.py, sweep.py and the benchmarks: booleans that parse
as written, every Config field as a flag whose help gives its meaning, unit, paper symbol,
choices and default, and errors in one line."""

import argparse
import dataclasses
import sys

from models import NEURONS
from utils_initialization import CHOICES, CONV_PRESET, FIELDS, MAIN_DEFAULTS, PRESETS


def parse_bool(text: str) -> bool:
    """true/false as written (the published `type=bool` flags took "False" for true)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_optional_float(text: str):
    """A float, or none."""
    return None if str(text).strip().lower() == "none" else float(text)


def field_type(field: dataclasses.Field):
    """The parser of a Config field's flag."""
    if field.default is None:  # Optional[float]: timestep
        return parse_optional_float
    return {bool: parse_bool, int: int, float: float, str: str}[field.type]


def parse_field(name: str, text: str):
    """The value of Config field `name` written as `text` (ValueError if it is not one)."""
    if name not in FIELDS:
        raise ValueError(f"{name!r} is not a configuration field (a main.py flag)")
    try:
        return field_type(FIELDS[name])(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None


def fail(prog: str, message, code: int):
    """The one line of an error the user can fix, and the exit code (2: bad input)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with every flag's default (where it has one and its help does not already say
    it), and the description and examples as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default in (None, argparse.SUPPRESS) or "default:" in text or not action.option_strings:
            return text
        shown = str(default).lower() if isinstance(default, bool) else ("none" if default == [] else default)
        return f"{text} (default: {shown})".replace("%", "%%") if "%" not in text else text


class OneLineParser(argparse.ArgumentParser):
    """Errors as one line and exit code 2, no usage dump; --help shows defaults and examples
    (`epilog`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def field_help(name: str) -> str:
    """'meaning [unit]; paper: symbol; one of: a, b (default: x; set by the ... presets)'."""
    field, meta = FIELDS[name], FIELDS[name].metadata
    text = meta.get("help", "")
    if meta.get("unit"):
        text += f" [{meta['unit']}]"
    if meta.get("symbol"):
        text += f"; paper: {meta['symbol']}"
    choices = CHOICES.get(name) or (tuple(NEURONS) if name == "neuron" else None)
    if choices:
        text += "; one of: " + ", ".join(choices)
    default = MAIN_DEFAULTS.get(name, field.default)
    presets = [task for task, preset in PRESETS.items() if name in preset]
    presets += ["convolutional"] if name in CONV_PRESET else []
    text += f" (default: {'none' if default is None else default}"
    return text + (f"; set by the {', '.join(presets)} preset{'s' * (len(presets) > 1)})" if presets else ")")


def add_config_flags(parser: argparse.ArgumentParser):
    """One flag per Config field, default None (= not given)."""
    group = parser.add_argument_group("configuration (every field of Config)")
    for name, field in FIELDS.items():
        group.add_argument(f"--{name}", type=field_type(field), default=None,
                           metavar=name.upper(), help=field_help(name).replace("%", "%%"))
