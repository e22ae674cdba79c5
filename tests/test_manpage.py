"""The man page and the shell completions follow the parser: every command and option of
``guestagent.cli.build_parser()`` is in guestagent(8) and is offered by bash and zsh, and nothing
else is (packaging/docgen.py generates all three at package build time)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docgen", REPO / "packaging" / "docgen.py")
assert _spec and _spec.loader
docgen: Any = importlib.util.module_from_spec(_spec)
sys.modules["docgen"] = docgen  # dataclasses look their module up
_spec.loader.exec_module(docgen)

SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS",
            "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO")


def parser_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], set[str], list[str]]]:
    """(command path, its visible option strings, its sub-command words), read from argparse."""
    options: set[str] = set()
    words: list[str] = []
    children = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                words.append(word)
                children.append((word, sub))
        elif action.option_strings and action.help != argparse.SUPPRESS:
            options.update(o for o in action.option_strings if o not in ("-h", "--help"))
    yield path, options, words
    for word, sub in children:
        yield from parser_commands(sub, (*path, word))


@pytest.fixture(scope="module")
def expected() -> dict[tuple[str, ...], tuple[set[str], list[str]]]:
    return {path: (opts, words) for path, opts, words in parser_commands(build_parser())}


@pytest.fixture(scope="module")
def man() -> str:
    return str(docgen.man_page())


def unroff(text: str) -> str:
    text = re.sub(r"\\f[BIRP]", "", text)
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "").replace("\\(aq", "'")


def man_commands(man: str) -> dict[tuple[str, ...], set[str]]:
    """The man page's commands (its .SS headings under COMMANDS, plus the program for OPTIONS)
    and the options each lists in its .TP tags."""
    found: dict[tuple[str, ...], set[str]] = {}
    current: tuple[str, ...] | None = None
    lines = man.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            section = line[4:].strip('"')
            current = () if section == "OPTIONS" else None
            if current is not None:
                found[current] = set()
        elif line.startswith(".SS "):
            words = unroff(line[4:].strip('"')).split()
            assert words[0] == "guestagent", line
            current = tuple(words[1:])
            found[current] = set()
        elif line == ".TP" and current is not None:
            # "--flag VALUE" or "-f, --flag VALUE"; a positional's tag is its name alone.
            tag = unroff(lines[i + 1])
            found[current].update(re.findall(r"(?:^|, )(--?[a-z][\w-]*)", tag))
    return found


def test_man_page_has_every_command_and_option_and_nothing_else(
    man: str, expected: dict[tuple[str, ...], tuple[set[str], list[str]]]
) -> None:
    found = man_commands(man)
    assert set(found) == set(expected), (set(found) ^ set(expected))
    for path, (options, _) in expected.items():
        assert found[path] == options, (path, found[path] ^ options)


def test_man_page_sections(man: str) -> None:
    headings = [line[4:].strip('"') for line in man.splitlines() if line.startswith(".SH ")]
    assert headings == list(SECTIONS)
    assert man.startswith(".TH GUESTAGENT 8 ")
    assert "\\fBguestagent balloon simulate\\fR \\fB\\-\\-trace\\fR \\fIFILE\\fR" in man


def test_man_page_examples_parse(man: str) -> None:
    """Every guestagent command line under EXAMPLES is accepted by the parser."""
    examples = [unroff(line) for line in man.split(".SH EXAMPLES")[1].split(".SH")[0].splitlines()
                if line.startswith("\\fB")]
    assert len(examples) == len(docgen.EXAMPLES)
    checked = 0
    for example in examples:
        for part in re.split(r"&&|\|", example):
            argv = shlex.split(part)
            if argv and argv[0] == "guestagent":
                args = build_parser().parse_args(argv[1:])
                assert getattr(args, "func", None) is not None, example
                checked += 1
    assert checked >= 6


@pytest.mark.skipif(shutil.which("groff") is None,
                    reason="groff not installed (Debian: groff-base)")
def test_man_page_renders_without_warnings(man: str, tmp_path: Path) -> None:
    page = tmp_path / "guestagent.8"
    page.write_text(man)
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr


def _queries(
    expected: dict[tuple[str, ...], tuple[set[str], list[str]]]
) -> list[tuple[list[str], set[str]]]:
    """(words typed, what must be offered for the last one): every sub-command list, every option
    list, and the choices of --log-level and of balloon simulate --policy."""
    queries = []
    for path, (options, words) in expected.items():
        typed = ["guestagent", *path]
        if words:
            queries.append(([*typed, ""], set(words)))
        queries.append(([*typed, "--"], {o for o in options if o.startswith("--")} | {"--help"}))
    queries.append((["guestagent", "--log-level", ""], {"debug", "info", "warning", "error"}))
    queries.append((["guestagent", "--root", "/x", "balloon", "simulate", "--policy", ""],
                    {"none", "classic", "pressure"}))
    return queries


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_offers_the_parsers_words(
    tmp_path: Path, expected: dict[tuple[str, ...], tuple[set[str], list[str]]]
) -> None:
    script = tmp_path / "guestagent.bash"
    script.write_text(docgen.bash_completion())
    queries = _queries(expected)
    lines = [f"source {shlex.quote(str(script))}"]
    for words, _ in queries:
        array = " ".join(shlex.quote(w) for w in words)
        lines.append(f"COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; COMPREPLY=(); "
                     "_guestagent; echo \"${COMPREPLY[*]}\"")
    result = subprocess.run(["bash", "--norc", "-c", "\n".join(lines)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answers = result.stdout.split("\n")
    for (words, want), got in zip(queries, answers):
        assert set(got.split()) == want, (words, got)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed (Debian: zsh)")
@pytest.mark.timeout(240)
def test_zsh_completion_offers_the_parsers_words(
    tmp_path: Path, expected: dict[tuple[str, ...], tuple[set[str], list[str]]]
) -> None:
    fpath = tmp_path / "fpath"
    fpath.mkdir()
    (fpath / "_guestagent").write_text(docgen.zsh_completion())
    check = subprocess.run(["zsh", "-n", str(fpath / "_guestagent")], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    picked = [q for q in _queries(expected)
              if q[0][-1] == "" or q[0][1:-1] in ([], ["run"], ["balloon", "simulate"])]
    for words, want in picked:
        line = " ".join(words[:-1]) + " " + words[-1]
        result = subprocess.run(
            ["zsh", "-f", str(REPO / "tests" / "zsh_capture.zsh"), str(fpath), line],
            capture_output=True, text=True, timeout=30)
        got = {w for w in result.stdout.split("\n") if w}
        assert got == want, (line, got ^ want, result.stderr)
