"""CLI shell: --help everywhere, the models table, one-line errors."""

from __future__ import annotations

import json

import pytest

from glfuse.cli.main import build_parser, main


def test_help_everywhere(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"models", "demo", "classify", "fuse", "stage"} <= set(sub.choices)
    for name, p in sub.choices.items():
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        nested = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        for a in nested:
            for sname in a.choices:
                with pytest.raises(SystemExit) as e:
                    main([name, sname, "--help"])
                assert e.value.code == 0, (name, sname)
    assert "usage" in capsys.readouterr().out


def test_models_table(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "hifuse_tiny*", "--num-classes", "7", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert rows["hifuse_tiny"]["params"] == 118_086_497
    assert abs(rows["hifuse_tiny"]["gflops"] - 35.04) < 0.01
    assert "hifuse_tiny_paper" in capsys.readouterr().out


def test_unknown_model_is_one_line_error(capsys):
    assert main(["models", "nope*"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("glfuse: error:") and err.count("\n") == 1
