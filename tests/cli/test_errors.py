"""How ``kn-lens`` reports errors: a :class:`~kn_lens.KnLensError` (bad input) is one line and exit
status 2; any other exception is a bug in kn_lens: its traceback, a line asking for a report, exit
status 1; ``--debug`` shows the traceback of every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from kn_lens import KnLensError, cli
from kn_lens.pipeline.steps import Pipeline


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _raise(exc: BaseException):
    def step(*_args: object, **_kwargs: object) -> None:
        raise exc

    return step


def test_bad_input_is_one_line_and_status_2(tmp_path: Path, capsys) -> None:
    rc = cli.main(["plot", "--out", str(tmp_path)])  # no results.json: a RunDirError
    lines = _err_lines(capsys)
    assert rc == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("kn-lens: error: ") and "results.json" in lines[0]


def test_a_knlenserror_from_a_step_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(Pipeline, "run_step", _raise(KnLensError("neuron L9.N1 out of\nrange")))
    rc = cli.main(["identify", "--out", str(tmp_path / "o"), "-q"])
    lines = _err_lines(capsys)
    assert rc == 2
    assert lines == ["kn-lens: error: neuron L9.N1 out of range"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("boom"), KeyError("boom")])
def test_any_other_exception_is_a_bug(tmp_path: Path, capsys, monkeypatch, exc) -> None:
    monkeypatch.setattr(Pipeline, "run_step", _raise(exc))
    rc = cli.main(["identify", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert f"{type(exc).__name__}: " in err and "boom" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("kn-lens: error: ") and "bug in kn_lens" in last and "report" in last


@pytest.mark.parametrize(
    "argv", [["--debug", "plot"], ["plot", "--debug"]], ids=["before", "after"]
)
def test_debug_shows_the_traceback_of_bad_input(tmp_path: Path, capsys, argv) -> None:
    rc = cli.main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "RunDirError" in err
    assert err.strip().splitlines()[-1].startswith("kn-lens: error: ")
    assert "bug in kn_lens" not in err


def test_reproduce_reports_a_bug_in_one_analysis_and_goes_on(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    ran: list[str] = []

    def run_step(run: object, step: str) -> None:
        ran.append(step)
        if step == "modify":
            raise IndexError("boom in modify")
        if step == "erase":
            raise KnLensError("--erase: unknown relation(s) P999")

    monkeypatch.setattr(Pipeline, "run_step", run_step)
    monkeypatch.setattr(Pipeline, "write_report", lambda self: {})
    rc = cli.main(["reproduce", "--out", str(tmp_path / "o"), "-q", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert ran[0] == "attribute" and {"modify", "update", "erase"} <= set(ran)
    assert "Traceback (most recent call last)" in err and "IndexError: boom in modify" in err
    assert err.count("Traceback") == 1  # the bad input (erase) has none
    last = err.strip().splitlines()[-1]
    assert "modify (a bug in kn_lens" in last and "erase (--erase: unknown relation" in last


def test_model_may_be_a_gguf_file(tmp_path: Path) -> None:
    from kn_lens.cli.parser import build_parser
    from kn_lens.cli.run import CliError, from_args

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")

    def run(model: Path) -> Pipeline:
        argv = ["identify", "--model", str(model), "--out", str(tmp_path / "o")]
        return from_args(build_parser().parse_args(argv))

    assert run(gguf).opts["model"] == str(gguf)  # was refused as "no such folder"
    with pytest.raises(CliError, match=r"no such \.gguf file"):
        run(tmp_path / "missing.gguf")
    with pytest.raises(CliError, match="no such folder"):
        run(tmp_path / "missing")
