"""The argument parser answers without torch: ``--help``, ``--version`` and argument errors.

Parsing happens before torch or TransformerLens is imported (issue 12: help took 8 s). Each
subcommand lists only the options it uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from kn_lens.cli.parser import RECORDED_DEFAULTS, build_parser
from kn_lens.config import ANALYSIS_NAMES, DTYPE_NAMES, PaperConfig

HEAVY = ("torch", "transformer_lens", "transformers", "plotly", "numpy")

_PROBE = """
import sys
from kn_lens.cli import main
rc = main(sys.argv[1:])
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize(
    "argv, rc",
    [
        (["--help"], 0),
        (["--version"], 0),
        (["attribute", "--help"], 0),
        (["reproduce", "--help"], 0),
        (["attribute", "--steps", "zero"], 2),
        (["nonsense"], 2),
        (["update", "--lambda2", "nan"], 2),
    ],
)
def test_parsing_imports_nothing_heavy(argv: list[str], rc: int) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == rc, proc.stderr
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], proc.stderr  # none of torch, transformer_lens, ... was imported
    if rc == 2:
        assert "kn-lens" in proc.stderr and "error:" in proc.stderr
        assert "Traceback" not in proc.stderr
    # Generous on a shared machine; importing transformer_lens alone takes several seconds.
    assert seconds < 5, seconds


def _options(command: str) -> set[str]:
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub = subparsers[0].choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def test_each_subcommand_lists_only_its_options() -> None:
    attribute = _options("attribute")
    assert {"--steps", "--shard", "--executor", "--ray-address", "--threads"} <= attribute
    assert not {"--web", "--lambda1", "--erase", "--top-k"} & attribute
    identify = _options("identify")
    assert not {"--steps", "--batch-size", "--device", "--executor", "--shard"} & identify
    for name in ("modify", "update", "erase"):
        assert "--steps" not in _options(name) and "--web" not in _options(name)
    assert {"--lambda1", "--lambda2", "--n-edits"} <= _options("update")
    assert {"--erase", "--top"} <= _options("erase")
    assert {"--top-k", "--web"} <= _options("trigger")
    assert _options("plot") == {
        "-h",
        "--help",
        "--out",
        "-v",
        "--verbose",
        "-q",
        "--quiet",
        "--debug",
    }
    reproduce = _options("reproduce")
    assert {"--executor", "--skip", "--lambda1", "--erase", "--top-k"} <= reproduce
    assert "--shard" not in reproduce


def test_parser_names_are_the_registry_names() -> None:
    from kn_lens.attribution import DTYPES
    from kn_lens.experiments import ANALYSES

    assert tuple(ANALYSES) == ANALYSIS_NAMES
    assert tuple(DTYPES) == DTYPE_NAMES
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == ("attribute", *ANALYSIS_NAMES, "plot", "reproduce")
    dtype = next(a for a in sub.choices["attribute"]._actions if a.dest == "dtype")
    assert tuple(dtype.choices or ()) == DTYPE_NAMES


def test_parser_defaults_are_paper_config_defaults(capsys) -> None:
    paper = PaperConfig()
    for key in ("steps", "dtype", "seed"):
        assert RECORDED_DEFAULTS[key] == getattr(paper, key)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {paper.steps}," in text  # --steps
    assert f"PaperConfig.lambda2, {paper.lambda2:g})" in text
    assert f"PaperConfig.erase_top, {paper.erase_top})" in text


def test_help_names_encoders_and_decoders(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "encoders" in top and "decoders" in top and "in BERT" not in top
    with pytest.raises(SystemExit):
        build_parser().parse_args(["attribute", "--help"])
    model_help = " ".join(capsys.readouterr().out.split())
    for needle in ("decoder", ".gguf", "smollm2-135m", "Hugging Face checkpoint folder"):
        assert needle in model_help
