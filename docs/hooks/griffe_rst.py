"""A Griffe extension for the API reference: the code's docstrings use a little
reStructuredText (``:mod:`x``` roles, simple tables, ``::`` blocks); mkdocstrings renders
Markdown. Each docstring is converted with :func:`generated.rst_to_markdown` before rendering.

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``); only the docs build imports Griffe.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import griffe

_spec = importlib.util.spec_from_file_location(
    "kn_lens_docs_generated", Path(__file__).with_name("generated.py")
)
assert _spec and _spec.loader
_generated = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generated)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring from the code's reStructuredText habits into Markdown."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _generated.rst_to_markdown(obj.docstring.value)
