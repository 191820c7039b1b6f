"""``run_config.json`` next to every output and ``--config FILE`` reading it (or TOML) back."""

from __future__ import annotations

import json

import pytest

from petuq_sirf.cli.main import build_parser, main
from petuq_sirf.cli.run_config import RUN_CONFIG


def _record(folder):
    return json.loads((folder / RUN_CONFIG).read_text())


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("petuq: error:"), err
    return err[0]


SIM = ["--quiet", "simulate", "--counts", "1e4", "--phantom", "brain", "--seed", "4"]


def test_resolved_settings_are_written_and_read_back(tmp_path):
    first = tmp_path / "a"
    assert main([*SIM, "--out", str(first)]) == 0
    rec = _record(first)
    assert rec["command"] == "simulate" and rec["options"]["counts"] == 1e4 and rec["options"]["phantom"] == "brain"
    assert rec["options"]["randoms_fraction"] == 0.2  # defaults are recorded too
    assert {"petuq_sirf_version", "torch_version", "backend", "device", "date"} <= set(rec)
    assert rec["device"] in ("cpu", "cuda") and rec["backend"] == "embedded"
    again = tmp_path / "b"
    assert main(["--quiet", "simulate", "--config", str(first / RUN_CONFIG), "--out", str(again)]) == 0
    rec2 = _record(again)
    assert {k: v for k, v in rec2["options"].items() if k != "out"} == {
        k: v for k, v in rec["options"].items() if k != "out"
    }
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (first, again))
    assert a["prompts"] == b["prompts"]  # the same settings give the same (seeded) acquisition


def test_reconstruct_records_the_resolved_iterations_and_round_trips(tmp_path):
    acq = tmp_path / "acq"
    assert main([*SIM, "--out", str(acq)]) == 0
    rec_dir = tmp_path / "r"
    assert main(["reconstruct", str(acq), "--method", "map-rdp", "--quiet", "--out", str(rec_dir)]) == 0
    options = _record(rec_dir)["options"]
    assert options["iterations"] == 100 and options["input"] == str(acq)  # the method's default, resolved
    # the positional input and the required --out can both come from the file
    toml = tmp_path / "settings.toml"
    toml.write_text(f'input = "{acq}"\nout = "{tmp_path / "r2"}"\nmethod = "osem"\niterations = 1\nquiet = true\n')
    assert main(["reconstruct", "--config", str(toml)]) == 0
    assert _record(tmp_path / "r2")["options"]["iterations"] == 1


def test_command_line_flags_override_the_file(tmp_path):
    toml = tmp_path / "sim.toml"
    toml.write_text('counts = 2e4\nphantom = "brain"\n')
    out = tmp_path / "o"
    assert main(["--quiet", "simulate", "--config", str(toml), "--counts", "3e4", "--out", str(out)]) == 0
    options = _record(out)["options"]
    assert options["counts"] == 3e4 and options["phantom"] == "brain"


@pytest.mark.parametrize(
    "text,needles",
    [
        ("counts = 1e4\nbogus-option = 3\n", ("unknown option 'bogus-option'", "petuq simulate")),
        ("counts = 1e30\n", ("'counts'", "--counts", "maximum")),
        ("phantom = 3\nlistmode = 'yes'\n", ("'listmode'", "true or false")),
        ("counts = [1\n", ("not valid TOML",)),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, capsys, text, needles):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    assert main(["simulate", "--config", str(toml), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "o").exists()


def test_a_run_config_of_another_command_is_refused(tmp_path, capsys):
    first = tmp_path / "a"
    assert main([*SIM, "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["demo", "--config", str(first / RUN_CONFIG), "--out", str(tmp_path / "d")]) == 2
    assert "settings of 'petuq simulate'" in _one_error_line(capsys)


def test_every_command_has_config():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert any("--config" in a.option_strings for a in p._actions), name


def test_weight_record_command_line_can_be_run_again():
    import argparse

    from petuq_sirf.cli.common import command_line

    ns = argparse.Namespace(
        families="thorax,ellipses",
        counts_range=(1e4, 1e6),
        dose_input=True,
        force=False,
        weights=None,
        steps=300,
        threads=None,
        global_quiet=True,
        out="w",
        handler=print,
    )
    cmd = command_line("train-unrolled", ns)
    assert (
        cmd
        == "petuq train-unrolled --families thorax,ellipses --counts-range 10000.0,1000000.0 --dose-input --steps 300"
    )
    from petuq_sirf.cli.main import build_parser

    args = build_parser().parse_args(cmd.split()[1:] + ["--out", "w"])
    assert args.dose_input and args.counts_range == (1e4, 1e6) and args.families == "thorax,ellipses"
