#!/usr/bin/env python3
"""The man page guestagent(8) and the bash and zsh completions, generated from the CLI's parser.

    python3 packaging/docgen.py man  [-o FILE]     roff for man(1)
    python3 packaging/docgen.py bash [-o FILE]     for /usr/share/bash-completion/completions/
    python3 packaging/docgen.py zsh  [-o FILE]     for /usr/share/zsh/vendor-completions/_guestagent
    python3 packaging/docgen.py all OUTDIR         guestagent.8, guestagent.bash, _guestagent
    python3 packaging/docgen.py exit-status        the README's exit status tables (Markdown)

guestagent must be importable (PYTHONPATH=. in a checkout with the extension built, or the
installed tree). The packages run this at build time (packaging/debian/rules,
packaging/rpm/guestagent.spec), so the man page and the completions follow the parser as it is.
Every command, sub-command and option comes from ``guestagent.cli.build_parser()`` (options
hidden with ``help=SUPPRESS`` stay hidden); the prose sections below (DESCRIPTION, EXIT STATUS,
ENVIRONMENT, FILES, EXAMPLES) are written here.

Why not Debian 12's tools: argparse-manpage 1.2.2 hard-codes section 1 in ``.TH``, prints each
sub-command's usage as raw text and takes extra sections only through a private attribute of
the parser; shtab 1.5.5's bash script offers only the first word of every choice list (so
``guestagent <TAB>`` offers ``topology`` alone: ``${!var}`` of an array in its
``_set_new_action``). Newer releases of both are not in Debian 12.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

PROG = "guestagent"

DESCRIPTION = """\
.B guestagent
reads the virtual NUMA topology Xen gives the guest and what Linux shows in
sysfs, publishes it in the guest's xenstore tree
.RI ( data/guestagent ),
sizes the guest's memory to its working set through the balloon driver, moves
cold memory to another virtual node (DAMON) and binds passthrough devices'
interrupts to their node.
In Dom0 it tells the guests which node each of their devices belongs to.
.PP
Every command is a job run once, except
.BR run ,
the daemon, which runs every job the configuration turns on, on one event loop.
It is started by
.BR systemd (1)
as
.I guestagent.service
(guests) or
.I guestagent\\-dom0.service
(Dom0): SIGHUP reloads the configuration (a bad file is refused and the running
configuration stays); SIGTERM undoes what the jobs changed and exits.
.PP
Every command reads
.IR /sys ,
.IR /proc ,
.I /dev
and
.I /run
below one root directory
.RB ( \\-\\-root
or
.BR GUESTAGENT_ROOT ),
so it can be run on a copy of a host's tree.
.PP
Logs go to standard error as logfmt lines (or JSON lines with
.B log_format = \\(dqjson\\(dq
in the configuration).
When standard error is the journal, each line carries its syslog priority,
so
.B journalctl \\-p warning \\-u guestagent
shows the warnings and errors.
"""

#: The exit codes (cli.main; status's 3 in guestagent.daemon.commands). Every failure is one line
#: on standard error: "guestagent: " and what failed, naming the file, key or value.
EXIT_STATUS = (
    ("0", "Success: the command did what it says (see below for what counts, per command)."),
    ("1", "The command failed: the host lacks what it needs, an input could not be read, a "
          "configuration was refused, another guestagent holds the state directory, or a "
          "change failed."),
    ("2", "Usage error: an unknown command or option, a missing or bad argument (a number "
          "that is NaN or infinite too); the usage of the command it was given to is printed. "
          "Also a command group named without its action (balloon, tiering, host, dom0, "
          "config), which prints its help."),
    ("3", "status only: no daemon is running (LSB \"program is not running\"): the status "
          "socket is missing, or nobody listens on it."),
    ("4", "A finding: the command read everything it needs and reports a problem (in its "
          "output). topology: Xen and Linux disagree; tiering status: [tiering] is enabled and "
          "no backend it allows can serve."),
    ("130", "Interrupted (SIGINT)."),
)

#: (command, what its exit status means): the EXIT STATUS section and the README's table
#: (tests/test_exit_codes.py checks that every command of the parser is here and in README.md).
EXIT_BY_COMMAND = (
    ("topology", "0 when Xen and Linux agree, or only one of them could be read; 4 when both "
                 "were read and they disagree (every disagreement is in the output); 1 when "
                 "nothing could be read."),
    ("publish", "0 published (or printed, with --dry-run); 1 nothing to publish, or xenstore "
                "refused or did not answer."),
    ("balloon status", "0; 1 when an input cannot be read."),
    ("balloon simulate", "0; 1 when the trace cannot be read."),
    ("balloon record", "0; 1 when the configuration is refused, the trace cannot be written or "
                       "an input cannot be read."),
    ("balloon run", "0 when the daemon stopped (signal, --duration), also without a balloon "
                    "driver (the feature stays off); 1 when the job gave up after three failed "
                    "ticks in a row (the target reset first), the configuration is refused, or "
                    "another guestagent holds the state directory."),
    ("balloon set", "0 written; 1 outside the limits, without a balloon driver, or when another "
                    "guestagent holds the state directory."),
    ("balloon --reset", "0 reset, also without a balloon driver (nothing to undo); 1 when another "
                        "guestagent holds the state directory (the daemon is running) or the "
                        "write failed."),
    ("devices", "0; 1 when the configuration is refused."),
    ("devices apply", "0 every step applied; 1 when any step failed (its failed line says "
                      "which), the configuration is refused, or another guestagent holds the "
                      "state directory."),
    ("devices --reset", "0 everything recorded restored (or nothing to undo); 1 when anything "
                        "could not be restored (an error line each) or another guestagent holds "
                        "the state directory."),
    ("devices irqbalance-policy", "always 0 (irqbalance wants that)."),
    ("tiering status", "0 a backend serves, or none does and [tiering] is off; 4 [tiering] is "
                       "enabled and no backend it allows can serve (the daemon's tiering job "
                       "would not start); 1 when an input or the configuration cannot be read "
                       "or is refused."),
    ("tiering run", "0 when stopped (SIGTERM, SIGINT, --duration; after undoing); 1 when no "
                    "backend can serve, the configuration (files or options) is refused, or "
                    "another guestagent holds the state directory."),
    ("tiering --reset", "0 every kdamond the agent journalled turned off and removed (or nothing "
                        "to undo); 1 when a step failed (an error line each) or another "
                        "guestagent holds the state directory."),
    ("reset", "0 everything undone (balloon, devices, dom0_devices, tiering, numa), or nothing "
              "to undo; 1 "
              "when any part failed (one error line each, naming the part; the other parts still "
              "ran) or another guestagent holds the state directory (nothing undone)."),
    ("host topology", "0; 1 outside Dom0 or when Xen's sysctl cannot be read."),
    ("host numa", "0; 1 outside Dom0, with a --window or --threshold out of range, or when "
     "Xen or xenstore cannot be read."),
    ("host devices", "0; 1 outside Dom0, when Xen cannot be read, when any device has a failed "
     "line (an IRQ's affinity unreadable, its write or a thread's move refused), or with "
     "--apply when another "
     "guestagent holds the state directory."),
    ("host devices --reset", "0 every IRQ and thread affinity dom0-devices.json records "
     "restored (or "
     "nothing to undo); 1 when one could not be restored (an error line each) or another "
     "guestagent holds the state directory."),
    ("dom0 publish", "0 every guest published; 1 when any guest failed (one line each)."),
    ("dom0 run", "0 when stopped (SIGTERM, SIGINT, --duration); 1 outside Dom0, without "
                 "xenstore or Xen's sysctls, when the configuration is refused, or another "
                 "guestagent holds the state directory."),
    ("run", "0 when stopped by SIGTERM (after undoing); 1 when the configuration is refused, "
            "another daemon holds the state directory, the start failed, or it is not run as "
            "root (one line saying what needs root; so do balloon run, tiering run and dom0 "
            "run)."),
    ("status", "0 the daemon answered; 3 no daemon runs; 1 it could not be asked (the socket is "
               "root-only) or did not answer."),
    ("config check", "0 valid; 1 refused (one line per problem) or a --config or --conf-dir "
                     "named on the command line does not exist."),
    ("config show", "0; 1 as config check."),
    ("config doc", "always 0."),
)

ENVIRONMENT = (
    ("GUESTAGENT_ROOT", "The root directory for host paths when --root is not given "
                        "(default: /)."),
    ("XENSTORED_PATH", "The xenstore socket or device to use, as libxenstore reads it; by "
                       "default the xenstored socket, then /dev/xen/xenbus, below the root."),
    ("NOTIFY_SOCKET", "Set by systemd: run reports READY=1, STATUS=, RELOADING=1 and STOPPING=1 "
                      "there (Type=notify)."),
    ("WATCHDOG_USEC, WATCHDOG_PID", "Set by systemd's WatchdogSec=: run pings the watchdog "
                                    "twice per period."),
    ("JOURNAL_STREAM", "Set by systemd when standard error is the journal: log lines then start "
                       "with their syslog priority (sd-daemon(3)) and carry no timestamp."),
)

FILES = (
    ("/etc/guestagent/guestagent.toml", "The configuration; then /etc/guestagent/conf.d/*.toml "
     "in name order, later files overriding earlier ones key by key. Every key, its default and "
     "meaning: guestagent config doc, or /usr/share/doc/guestagent/CONFIG.md."),
    ("/run/guestagent/", "Runtime state: the status socket status.sock (root only), "
                         "daemon.lock (held by the running daemon, and by devices apply, "
                         "devices --reset, balloon set, balloon run, balloon --reset, balloon "
                         "--prepare-guard, tiering --reset and reset while they run: another one "
                         "refuses, naming the holder's PID) and what must be undone after a "
                         "crash (devices.json; balloon.json: the balloon's original target and "
                         "the allocation guard's changes; tiering.json), which guestagent reset "
                         "undoes; and balloon-status.json (the balloon controller's last "
                         "decisions and last reset, shown by guestagent balloon status; not "
                         "undo)."),
    ("/lib/systemd/system/guestagent.service", "The guest unit (its sandbox is described in "
     "the file; two short steps run outside it: balloon --prepare-guard before the daemon "
     "starts, reset after it stops); guestagent-dom0.service for Dom0; "
     "guestagent-cloud-config.service runs the cloud-init module."),
    ("/usr/share/guestagent/cloud-config.schema.json", "JSON schema of the cloud-config key "
     "guestagent:, which cloud-init's module cc_guestagent writes into the configuration file "
     "(/usr/share/doc/guestagent/cloud-init/README.md)."),
    ("/usr/share/guestagent/grafana/guestagent.json", "A Grafana dashboard for the metrics "
     "([metrics] enabled or textfile); /usr/share/guestagent/prometheus/guestagent.rules.yml: "
     "Prometheus alerting rules. Turning the metrics on, importing both and every series: "
     "/usr/share/doc/guestagent/DASHBOARD.md."),
)

#: (what it does, the command line): shown under EXAMPLES.
EXAMPLES = (
    ("The topology as Xen and Linux see it, as JSON:", "guestagent topology --json"),
    ("The same on a copy of another host's /sys and /proc:",
     "guestagent --root /srv/host-copy topology"),
    ("Check the configuration before a reload, then reload:",
     "guestagent config check && systemctl reload guestagent"),
    ("Every configuration key with its default:", "guestagent config doc"),
    ("What the daemon is doing:", "guestagent status"),
    ("The daemon's warnings and errors since boot:", "journalctl -b -p warning -u guestagent"),
    ("Replay a recorded trace through the pressure policy:",
     "guestagent balloon simulate --trace trace.jsonl --policy pressure"),
    ("PCI devices and the node each belongs to:", "guestagent devices --json"),
    ("In Dom0, the guests whose vCPUs run away from their vnodes' memory, worst first, over "
     "a 30 s sample:", "guestagent host numa --window 30"),
    ("Undo everything the agent changed, also after a crash (what the unit runs after a stop):",
     "guestagent reset"),
)

def exit_status_markdown() -> str:
    """The README's exit status table, from the same text as the man page's EXIT STATUS."""
    rows = ["| exit status | meaning |", "|---|---|"]
    rows += [f"| {code} | {text} |" for code, text in EXIT_STATUS]
    rows += ["", "| command | exit status |", "|---|---|"]
    rows += [f"| `{PROG} {command}` | {text} |" for command, text in EXIT_BY_COMMAND]
    return "\n".join(rows) + "\n"


SEE_ALSO = ("systemctl(1)", "journalctl(1)", "systemd.exec(5)", "sd-daemon(3)", "cloud-init(1)",
            "xl(1)")


# --- the parser, walked -------------------------------------------------------------------------

@dataclass
class Option:
    flags: list[str]
    metavar: str | None  # None: a flag without a value
    choices: list[str]
    help: str
    required: bool
    kind: str  # 'file', 'dir', 'choice', 'value' or 'flag'


@dataclass
class Command:
    path: list[str]  # [] for the program itself
    help: str
    description: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Option] = field(default_factory=list)
    children: list[Command] = field(default_factory=list)
    children_required: bool = False

    @property
    def name(self) -> str:
        return " ".join([PROG, *self.path])


def _expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"
    if action.choices is not None:
        return "choice"
    meta = str(action.metavar or "").upper()
    dest = action.dest.lower()
    if meta == "DIR" or dest.endswith("dir") or dest == "root":
        return "dir"
    if meta == "FILE" or dest in ("config", "file", "trace", "out"):
        return "file"
    return "value"


def _help(parser: argparse.ArgumentParser, action: argparse.Action, kind: str) -> str:
    """The option's help, with its choices and default when the help does not say them."""
    text = _expand_help(parser, action)
    default = action.default
    if kind == "choice" and not text:
        text = "one of " + ", ".join(str(c) for c in action.choices or ())
    if (kind != "flag" and default not in (None, "", argparse.SUPPRESS)
            and "default" not in text):
        text = f"{text} (default: {default})" if text else f"default: {default}"
    return text


def _option(parser: argparse.ArgumentParser, action: argparse.Action) -> Option:
    kind = _kind(action)
    choices = [str(c) for c in action.choices] if action.choices is not None else []
    if kind == "flag":
        metavar = None
    elif isinstance(action.metavar, str):
        metavar = action.metavar
    elif choices:
        metavar = "|".join(choices)
    else:
        metavar = action.dest.upper()
    return Option(flags=list(action.option_strings), metavar=metavar, choices=choices,
                  help=_help(parser, action, kind), required=bool(action.required), kind=kind)


def walk(parser: argparse.ArgumentParser, path: list[str] | None = None,
         help_text: str = "") -> Command:
    """The command tree of ``parser``: every visible option, positional and sub-command."""
    path = path or []
    command = Command(path=path, help=help_text, description=" ".join(
        (parser.description or help_text or "").split()))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            command.children_required = bool(action.required)
            for name, sub in action.choices.items():
                command.children.append(walk(sub, [*path, name], helps.get(name, "")))
        elif isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        elif action.option_strings:
            command.options.append(_option(parser, action))
        else:
            command.positionals.append(_option(parser, action))
    return command


def every_command(command: Command) -> Iterator[Command]:
    yield command
    for child in command.children:
        yield from every_command(child)


def build() -> Command:
    from guestagent.cli import build_parser

    return walk(build_parser())


# --- man page -----------------------------------------------------------------------------------

def roff(text: str) -> str:
    """Plain text for a roff line: backslashes and hyphens escaped, no leading control char."""
    text = text.replace("\\", "\\e").replace("-", "\\-").replace("'", "\\(aq")
    return "\\&" + text if text.startswith(".") else text


def _synopsis_item(option: Option) -> str:
    # The option's first long name: "-f, --flag" shows --flag, "--config, --file" --config.
    name = next((f for f in option.flags if f.startswith("--")), option.flags[-1])
    flag = f"\\fB{roff(name)}\\fR"
    if option.metavar is not None:
        flag += f" \\fI{roff(option.metavar)}\\fR"
    return flag if option.required else f"[{flag}]"


def _synopsis(command: Command) -> str:
    parts = [f"\\fB{roff(command.name)}\\fR"]
    parts += [_synopsis_item(o) for o in command.options]
    parts += [f"\\fI{roff(p.metavar or '')}\\fR" for p in command.positionals]
    if command.children:
        words = "|".join(c.path[-1] for c in command.children)
        parts.append(f"\\fI{roff(words)}\\fR" if command.children_required
                     else f"[\\fI{roff(words)}\\fR]")
    return " ".join(parts)


def _option_lines(option: Option) -> list[str]:
    flags = ", ".join(f"\\fB{roff(f)}\\fR" for f in option.flags) or \
        f"\\fI{roff(option.metavar or '')}\\fR"
    if option.flags and option.metavar is not None:
        flags += f" \\fI{roff(option.metavar)}\\fR"
    return [".TP", flags, roff(option.help) if option.help else "\\&"]


def _capitalised(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.strftime("%Y-%m-%d")


def _tagged(items: tuple[tuple[str, str], ...], bold: bool) -> list[str]:
    lines = []
    for tag, text in items:
        style = "\\fB" if bold else "\\fI"
        lines += [".TP", f"{style}{roff(tag)}\\fR", roff(text)]
    return lines


def man_page(top: Command | None = None) -> str:
    from guestagent import __version__

    top = top or build()
    lines = [
        f'.TH GUESTAGENT 8 "{_date()}" "guestagent {__version__}" "System Administration"',
        ".SH NAME",
        "guestagent \\- make a Linux guest on a Xen NUMA host NUMA\\-aware",
        ".SH SYNOPSIS",
        " ".join([f"\\fB{PROG}\\fR", *(_synopsis_item(o) for o in top.options),
                  "\\fICOMMAND\\fR", "[\\fIARGS\\fR]"]),
        ".SH DESCRIPTION",
        DESCRIPTION.rstrip("\n"),
        ".SH OPTIONS",
        "\\fB\\-\\-root\\fR and \\fB\\-\\-log\\-level\\fR may come before or after the "
        "command word (\\fBguestagent \\-\\-root\\fR \\fIDIR\\fR \\fBtopology\\fR or "
        "\\fBguestagent topology \\-\\-root\\fR \\fIDIR\\fR); given twice, the one after "
        "it wins.",
    ]
    for option in top.options:
        lines += _option_lines(option)
    lines += [".SH COMMANDS",
              f"\\fB{PROG} \\-\\-help\\fR and \\fB{PROG} \\fICOMMAND\\fB \\-\\-help\\fR "
              "print the same from the program."]
    for command in every_command(top):
        if not command.path:
            continue
        lines += [f'.SS "{roff(command.name)}"', _synopsis(command), ".PP",
                  roff(_capitalised(command.description or command.help))]
        if command.children:
            lines += [".PP", "Actions: " + ", ".join(
                f"\\fB{roff(c.path[-1])}\\fR" for c in command.children) + "."]
        for option in [*command.positionals, *command.options]:
            lines += _option_lines(option)
    lines += [".SH EXIT STATUS", *_tagged(EXIT_STATUS, bold=True), ".PP",
              "By command:", *_tagged(tuple((f"{PROG} {c}", t) for c, t in EXIT_BY_COMMAND),
                                      bold=True)]
    lines += [".SH ENVIRONMENT", *_tagged(ENVIRONMENT, bold=True)]
    lines += [".SH FILES", *_tagged(FILES, bold=False)]
    lines.append(".SH EXAMPLES")
    for text, example in EXAMPLES:
        lines += [".PP", roff(text), ".PP", ".RS 4", ".nf", f"\\fB{roff(example)}\\fR", ".fi",
                  ".RE"]
    lines += [".SH SEE ALSO", ",\n".join(
        f".BR {name.split('(')[0]} ({name.split('(')[1]}" for name in SEE_ALSO)]
    return "\n".join(lines) + "\n"


# --- bash ---------------------------------------------------------------------------------------

def _bash_words(words: list[str]) -> str:
    return " ".join(words)


def bash_completion(top: Command | None = None) -> str:
    """A bash completion function: the command path is found by walking the words typed so far
    (skipping option values), then options, sub-commands or an option's values are offered."""
    top = top or build()
    tables: list[str] = []
    values: list[str] = []
    for command in every_command(top):
        key = " ".join(command.path)
        opts = [f for o in command.options for f in o.flags] + ["--help"]
        takes = [f for o in command.options if o.metavar is not None for f in o.flags]
        subs = [c.path[-1] for c in command.children]
        tables.append(f'        "{key}") subs="{_bash_words(subs)}"; '
                      f'opts="{_bash_words(opts)}"; takes="{_bash_words(takes)}" ;;')
        for option in command.options:
            if option.metavar is None:
                continue
            action = {
                "choice": f'COMPREPLY=($(compgen -W "{_bash_words(option.choices)}" -- "$cur"))',
                "dir": 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur"))',
                "file": 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))',
            }.get(option.kind, "COMPREPLY=()")
            for flag in option.flags:
                values.append(f'        "{key}|{flag}") {action} ;;')
    return f"""\
# bash completion for {PROG}(8): generated from its argument parser by packaging/docgen.py.

_{PROG}_table() {{
    # $1: the command path ("" for the program, e.g. "balloon simulate"); sets subs, opts, takes.
    case "$1" in
{chr(10).join(tables)}
        *) subs=""; opts="--help"; takes="" ;;
    esac
}}

_{PROG}_values() {{
    # $1: the command path, $2: the option whose value is being completed.
    case "$1|$2" in
{chr(10).join(values)}
        *) COMPREPLY=() ;;
    esac
}}

_{PROG}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" subs opts takes word i=1
    _{PROG}_table ""
    while [ "$i" -lt "$COMP_CWORD" ]; do
        word="${{COMP_WORDS[i]}}"
        if [[ " $takes " == *" $word "* ]]; then
            i=$((i + 1))
        elif [[ "$word" != -* && " $subs " == *" $word "* ]]; then
            path="${{path:+$path }}$word"
            _{PROG}_table "$path"
        fi
        i=$((i + 1))
    done
    local prev="${{COMP_WORDS[COMP_CWORD - 1]}}"
    if [ "$prev" = "=" ] && [ "$COMP_CWORD" -ge 2 ]; then
        prev="${{COMP_WORDS[COMP_CWORD - 2]}}"
    fi
    if [ "$COMP_CWORD" -gt 1 ] && [[ " $takes " == *" $prev "* ]]; then
        _{PROG}_values "$path" "$prev"
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    fi
    return 0
}}

complete -F _{PROG} {PROG}
"""


# --- zsh ----------------------------------------------------------------------------------------

def _zsh_quote(text: str) -> str:
    """Text inside a single-quoted _arguments spec: no quote, and [ ] : escaped."""
    text = text.replace("'", "").replace("\\", "\\\\")
    for char in "[]:":
        text = text.replace(char, "\\" + char)
    return text


def _zsh_function(command: Command) -> str:
    return "_" + "__".join([PROG, *command.path]).replace("-", "_")


def _zsh_spec(option: Option) -> list[str]:
    action = {
        "choice": "(" + " ".join(option.choices) + ")",
        "dir": "_files -/",
        "file": "_files",
    }.get(option.kind, " ")
    out = []
    for flag in option.flags:
        spec = f"{flag}[{_zsh_quote(option.help)}]"
        if option.metavar is not None:
            spec += f":{_zsh_quote(option.metavar)}:{action}"
        out.append(f"'{spec}'")
    return out


def zsh_completion(top: Command | None = None) -> str:
    top = top or build()
    functions = []
    for command in every_command(top):
        specs = [s for o in command.options for s in _zsh_spec(o)]
        specs.append("'(- *)--help[show the help and exit]'")
        for number, positional in enumerate(command.positionals, start=1):
            specs.append(f"'{number}:{_zsh_quote(positional.metavar or '')}: '")
        body = []
        if command.children:
            specs += ["'1:action:->action'", "'*::argument:->argument'"]
            described = " ".join(
                f"'{c.path[-1]}:{_zsh_quote(c.help)}'" for c in command.children)
            cases = "\n".join(
                f"                {c.path[-1]}) {_zsh_function(c)} ;;" for c in command.children)
            body = [
                "    case $state in",
                "        action)",
                f"            local -a actions=({described})",
                "            _describe -t actions 'action' actions ;;",
                "        argument)",
                "            case $words[1] in",
                cases,
                "            esac ;;",
                "    esac",
            ]
        joined = " \\\n        ".join(specs)
        functions.append("\n".join([
            f"{_zsh_function(command)}() {{",
            "    local curcontext=\"$curcontext\" state line",
            "    typeset -A opt_args",
            f"    _arguments -C \\\n        {joined}",
            *body,
            "}",
        ]))
    return (f"#compdef {PROG}\n# zsh completion for {PROG}(8): generated from its argument "
            "parser by packaging/docgen.py.\n\n" + "\n\n".join(functions)
            + f'\n\n{_zsh_function(top)} "$@"\n')


# --- command line -------------------------------------------------------------------------------

GENERATORS = {"man": man_page, "bash": bash_completion, "zsh": zsh_completion}
FILE_NAMES = {"man": "guestagent.8", "bash": "guestagent.bash", "zsh": "_guestagent"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="docgen.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=[*GENERATORS, "all", "exit-status"])
    parser.add_argument("outdir", nargs="?", help="with 'all': where to write the three files")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    if args.what == "exit-status":  # not packaged: the README's tables
        sys.stdout.write(exit_status_markdown())
        return 0
    top = build()
    if args.what == "all":
        if not args.outdir:
            parser.error("'all' needs OUTDIR")
        os.makedirs(args.outdir, exist_ok=True)
        for what, generate in GENERATORS.items():
            with open(os.path.join(args.outdir, FILE_NAMES[what]), "w") as f:
                f.write(generate(top))
        return 0
    text = GENERATORS[args.what](top)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
