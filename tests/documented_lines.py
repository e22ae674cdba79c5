"""The guestagent command lines the documentation shows (README.md, packaging/README.md and the
man page's EXAMPLES), made runnable: tests/test_documented_commands.py runs each on a fixture tree.

Taken: every line of a code block that runs ``guestagent`` (``$ `` prompts and shell glue such
as ``&& systemctl reload guestagent`` cut off) and every inline code span that starts with
``guestagent `` (the README's command table). A span's ``[--opt]`` gives the line with and without
it; its placeholders (``DIR``, ``F``, ``P``, ``S``) become :data:`PLACEHOLDERS`' values.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("README.md", "packaging/README.md")

#: What a placeholder of the documentation stands for on a fixture tree ({root}: the tree,
#: {trace}: a recorded trace, {out}: a file to write); by the option it follows, then alone.
AFTER_OPTION = {"--trace": "{trace}", "--out": "{out}", "--root": "{root}"}
PLACEHOLDERS = {"P": "pressure", "S": "2", "N": "700", "DIR": "{root}"}

_SPAN = re.compile(r"`(guestagent [^`]*)`")
_GLUE = re.compile(r"\s*(?:&&|\|\||;|\||>|2>)\s*")


def load_docgen() -> Any:
    spec = importlib.util.spec_from_file_location("docgen", REPO / "packaging" / "docgen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["docgen"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _code_lines(text: str) -> list[str]:
    """Lines of fenced blocks and of indented blocks (4 spaces after a blank line)."""
    out: list[str] = []
    fenced = False
    indented = False
    previous = ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            indented = line.startswith("    ") and (indented or previous.strip() == "")
        if fenced or indented:
            out.append(line.strip())
        previous = line
    return out


def _guestagent_parts(line: str) -> list[str]:
    """The ``guestagent ...`` commands of a shell line (``a && b``, ``a; [ ... ]``, ``a > f``)."""
    line = line.removeprefix("$ ").removeprefix("# ")
    parts = _GLUE.split(line)
    return [p.strip() for p in parts if p.strip().startswith("guestagent ")]


def _variants(span: str) -> list[str]:
    """``guestagent x [--a] [--b S]`` -> with and without each bracketed part."""
    groups = re.findall(r"\[([^\]]*)\]", span)
    if not groups or "$?" in span:
        return [span]
    skeleton = re.sub(r"\s*\[[^\]]*\]", "\0", span)
    out = []
    for picks in itertools.product((False, True), repeat=len(groups)):
        pieces = iter(f" {g}" if keep else "" for g, keep in zip(groups, picks))
        out.append(re.sub("\0", lambda _m, chosen=pieces: next(chosen), skeleton))
    return out


def _filled(line: str) -> str:
    words = shlex.split(line)
    for i, word in enumerate(words):
        option = words[i - 1] if i else ""
        words[i] = AFTER_OPTION.get(option, PLACEHOLDERS.get(word, word))
    return " ".join(words)


def documented_lines() -> dict[str, str]:
    """Each runnable line (placeholders filled in as ``{root}`` ...) -> where it is documented."""
    found: dict[str, str] = {}
    for name in SOURCES:
        text = (REPO / name).read_text()
        for line in _code_lines(text):
            for part in _guestagent_parts(line):
                found.setdefault(_filled(part), f"{name} (code block)")
        for span in _SPAN.findall(text):
            for variant in _variants(span):
                for part in _guestagent_parts(variant):
                    found.setdefault(_filled(part), f"{name} (inline)")
    for _what, example in load_docgen().EXAMPLES:
        for part in _guestagent_parts(example):
            found.setdefault(_filled(part), "guestagent(8) EXAMPLES")
    return found
