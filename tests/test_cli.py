"""cli.py: booleans as written, field types, --help text generated from Config."""

import argparse

import pytest

from cli import OneLineParser, add_config_flags, field_help, parse_bool, parse_field


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("1", True), ("no", False)])
def test_booleans_parse_as_written(text, value):
    assert parse_bool(text) is value


def test_fields_parse_by_their_type():
    assert parse_field("n_hid", "32") == 32 and parse_field("tau_mem", "0.3") == 0.3
    assert parse_field("recurrent", "false") is False and parse_field("timestep", "none") is None
    for name, text in (("n_hid", "many"), ("recurrent", "maybe"), ("bogus", "1")):
        with pytest.raises(ValueError):
            parse_field(name, text)


def test_help_names_unit_symbol_choices_and_presets():
    assert field_help("tau_mem").startswith("centre of the hidden layers' membrane time constants [s]; paper: tau_mem")
    assert "set by the mts_xor" in field_help("tau_mem")
    assert "one of: cum, sum, vmax, vlast, freq, vmem_time" in field_help("decoder")
    assert field_help("n_epochs").endswith("(default: 10)")  # main.py's own default


def test_parser_errors_are_one_line(capsys):
    parser = OneLineParser(prog="x")
    add_config_flags(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n_hid", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--n_hid" in err
    assert isinstance(parser.parse_args([]), argparse.Namespace)


def test_help_shows_the_defaults_and_examples():
    import main
    import sweep
    sweep_help = " ".join(sweep.build_parser().format_help().split())
    for text in ("--jobs JOBS seed groups trained at once on this machine (default: 1)",
                 "parent folder of sweep folders (default: results)", "(default: true)",
                 "(default: paper/paper_numbers.json)", "examples: python3 sweep.py --list"):
        assert text in sweep_help, text
    main_help = " ".join(main.build_parser().format_help().split())
    assert "parent folder of run folders (default: results)" in main_help
    assert "examples: python3 main.py --dataset_name mts_xor" in main_help
    assert "(default: None)" not in main_help  # the Config flags say their own defaults
