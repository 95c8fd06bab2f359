"""Docs that cannot drift: every `tether ...` line in README.md and docs/*.md must parse.

Each command line (in code blocks, with `\\` continuations joined, and in inline code) is checked
against the real CLI through typer's click introspection: the subcommand path exists, every
option is one that command accepts, and the positional arguments fit. Command lines in code
blocks must also give every required argument and option. The `Example:` line of every
command's --help is checked the same way, and every command group must show one.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main

from tether.cli import build_app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`(tether [^`]+)`")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str
    complete: bool  # a full command line (code block / help example), not a mention in prose

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def doc_commands() -> list[DocCommand]:
    commands = []
    for path in DOCS:
        commands += commands_in_markdown(path.read_text(), path.relative_to(ROOT).as_posix())
    return commands


def commands_in_markdown(text: str, name: str) -> list[DocCommand]:
    """`tether` command lines in fenced code blocks, and `tether ...` spans of inline code."""
    found: list[DocCommand] = []
    in_block = False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        i += 1
        if FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block:
            found += [DocCommand(f"{name}:{number}", m, False) for m in INLINE.findall(line)]
            continue
        command = _strip_prompt(line.strip())
        if command.startswith("tether ") or command == "tether":
            while command.endswith("\\") and i < len(lines):
                command = command[:-1] + " " + lines[i].strip()
                i += 1
            found.append(DocCommand(f"{name}:{number}", command, True))
        else:  # a comment in a block may quote a command inline, e.g. "# runs `tether demo`"
            found += [DocCommand(f"{name}:{number}", m, False) for m in INLINE.findall(line)]
    return found


def _strip_prompt(line: str) -> str:
    if line.startswith("$ "):
        line = line[2:]
    words = line.split(" ")
    while words and ENV_ASSIGNMENT.match(words[0]):  # MUJOCO_GL=egl tether ...
        words = words[1:]
    return " ".join(words)


def check(command: DocCommand, root) -> list[str]:
    """Problems with one command line (empty when it would parse)."""
    try:
        tokens = shlex.split(command.text, comments=True)
    except ValueError as exc:
        return [f"cannot split into words: {exc}"]
    segments, current = [], []
    for token in tokens:  # `tether a ; tether b`, `tether serve ... &`
        if token in (";", "&", "&&", "|", "||"):
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    problems = []
    for words in segments:
        if words and words[0] == "tether":
            problems += _check_words(words, command.complete, root)
    return problems


def _check_words(tokens: list[str], complete: bool, root) -> list[str]:
    cmd, path, rest = root, ["tether"], tokens[1:]
    while getattr(cmd, "commands", None):  # a group: take its options, then a subcommand
        rest, problems = _take_options(cmd, rest, " ".join(path), complete)
        if problems:
            return problems
        if not rest:
            return []  # `tether twin` alone shows the group's help
        if rest[0] not in cmd.commands:
            return [f"`{' '.join(path)}` has no subcommand '{rest[0]}' (has: {sorted(cmd.commands)})"]
        path.append(rest[0])
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    name = " ".join(path)
    positionals, problems = _take_options(cmd, rest, name, complete, all_options=True)
    if "--help" in rest or problems:
        return problems
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]
    unbounded = any(p.nargs < 0 for p in arguments)
    most = sum(max(p.nargs, 0) for p in arguments)
    if not unbounded and len(positionals) > most:
        problems.append(f"`{name}` takes {most} positional argument(s), got {positionals}")
    if complete:
        required = sum(max(p.nargs, 1) for p in arguments if p.required)
        if len(positionals) < required:
            problems.append(f"`{name}` needs {required} positional argument(s), got {positionals}")
        given = {_option_name(t) for t in rest if t.startswith("-")}
        for p in cmd.params:
            if p.param_type_name == "option" and p.required and not given & set(p.opts):
                problems.append(f"`{name}` needs {p.opts[0]}")
    return problems


def _take_options(cmd, tokens: list[str], name: str, complete: bool, all_options: bool = False):
    """Consume options (and their values) of `cmd`; return the other words and any problems.

    For a group, stop at the first word that is not an option (the subcommand). A mention in
    prose may end at an option's name ("`tether rollout --json` writes ...")."""
    options = {opt: p for p in cmd.params if p.param_type_name == "option" for opt in p.opts + p.secondary_opts}
    rest, problems = [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            rest += tokens[i:]
            break
        if not token.startswith("-") or token == "-":
            if not all_options:
                return tokens[i - 1 :], problems
            rest.append(token)
            continue
        option = _option_name(token)
        if option == "--help":
            continue
        param = options.get(option)
        if param is None:
            problems.append(f"`{name}` has no option {option} (has: {sorted(options)})")
            continue
        takes_value = not (param.is_flag or param.count)
        if takes_value and "=" not in token:
            if i >= len(tokens) and complete:
                problems.append(f"`{name} {option}` needs a value")
            i += 1
    return rest, problems


def _option_name(token: str) -> str:
    return token.split("=", 1)[0]


@pytest.fixture(scope="module")
def root():
    return typer.main.get_command(build_app())


def test_the_docs_contain_commands():
    commands = doc_commands()
    assert len(commands) > 40, "the extractor found too few commands: is it still reading the docs?"
    assert any(c.text.startswith("tether serve ") and c.complete for c in commands)


def test_every_documented_command_parses(root):
    problems = [f"{c}\n    -> {p}" for c in doc_commands() for p in check(c, root)]
    assert not problems, "commands in the docs that the CLI rejects:\n" + "\n".join(problems)


def test_every_help_example_parses_and_every_group_has_one(root):
    problems = []

    def visit(cmd, path):
        help_text = cmd.help or ""
        examples = re.findall(r"Example:\s*(tether [^\n]+)", help_text)
        if not examples:
            problems.append(f"`{' '.join(path)} --help` shows no 'Example: tether ...'")
        for example in examples:
            example = example.split("   (")[0].strip()  # a trailing "(then ...)" remark
            for p in check(DocCommand(" ".join(path) + " --help", example, True), root):
                problems.append(f"{' '.join(path)} --help: {example}\n    -> {p}")
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            visit(sub, [*path, name])

    visit(root, ["tether"])
    assert not problems, "\n".join(problems)


SOURCE_DIRS = ["tether", "robot", "teleop", "data", "policies", "calibration"]


def test_every_command_an_error_message_suggests_parses(root):
    """Messages tell users what to run ("run `tether data verify store.zarr`"); those commands
    must exist too. f-string fields become one word; synopses (`a|b`, `...`) are skipped."""
    problems = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for span in INLINE.findall(line):
                    if any(mark in span for mark in ("|", "...", "*", "<")):
                        continue
                    text = re.sub(r"\{[^}]*\}", "X", span)
                    where = f"{path.relative_to(ROOT)}:{number}"
                    problems += [f"{where}: {span}\n    -> {p}" for p in check(DocCommand(where, text, False), root)]
    assert not problems, "commands suggested by the code that the CLI rejects:\n" + "\n".join(problems)


def test_every_option_the_prose_names_exists(root):
    """`--options` quoted in prose ("Options: `--episodes`, `--seed` ...") belong to some tether
    command, or to a benchmark script (argparse); a renamed option shows up here."""
    known = {"--help"}

    def collect(cmd):
        for p in cmd.params:
            known.update(p.opts + p.secondary_opts)
        for sub in (getattr(cmd, "commands", None) or {}).values():
            collect(sub)

    collect(root)
    for script in (ROOT / "benchmarks").glob("*.py"):
        known.update(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text()))
    unknown = [
        f"{path.relative_to(ROOT)}:{number}: {option}"
        for path in DOCS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for span in re.findall(r"`([^`]+)`", line)
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span)
        if option not in known
    ]
    assert not unknown, "options in the docs that no command accepts:\n" + "\n".join(unknown)


def test_every_config_file_the_docs_name_exists():
    missing = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for path in DOCS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for name in re.findall(r"\bconfigs/[\w./-]*\w", line)
        if not (ROOT / name).exists()
    ]
    assert not missing, "the docs name config files that do not exist:\n" + "\n".join(missing)


def test_setup_facts_in_the_docs_match_the_build():
    """The Python version and the extras the docs state are the ones pyproject/Makefile use."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = re.fullmatch(r">=\s*(3\.\d+)", project["requires-python"]).group(1)
    extras = re.search(r"^EXTRAS\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    problems = []
    for path in DOCS:
        text = path.read_text()
        for version in re.findall(r"Python (3\.\d+)\+", text):
            if version != minimum:
                problems.append(f"{path.name} says Python {version}+, pyproject needs {minimum}")
        for listed in re.findall(r"pip install -e '\.\[([\w,-]+)\]'", text):
            if set(listed.split(",")) != set(extras.split(",")):
                problems.append(f"{path.name} installs [{listed}], the Makefile [{extras}]")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("tether serve runs/x --bind tcp://127.0.0.1:5555", None),
        ("tether serve --checkpoint runs/x", "no option --checkpoint"),
        ("tether serve", "needs 1 positional"),
        ("tether inspect a.zarr b.zarr", "takes 1 positional"),
        ("tether twin chek --task lift", "no subcommand 'chek'"),
        ("tether -v train --dataset d.zarr --set lr=3e-4 --no-progress", None),
        ("tether scan-bus --protocol feetech", "needs --port"),
        ("tether record --robot twin:lift --fast --episodes", "needs a value"),
    ],
)
def test_the_checker_catches_drift(root, line, expected):
    """The checker itself: it must reject what the issue found, and accept what is right."""
    problems = check(DocCommand("test", line, True), root)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_extraction_joins_continuations_and_reads_inline_code():
    text = "Run `tether demo --quick` first.\n```bash\n$ tether record --robot twin:lift \\\n    --episodes 3  # comment\nmake demo   # runs `tether demo`\n```\n"
    found = [(c.text, c.complete) for c in commands_in_markdown(text, "x.md")]
    assert found == [
        ("tether demo --quick", False),
        ("tether record --robot twin:lift  --episodes 3  # comment", True),
        ("tether demo", False),
    ]


# Scaled down so the walkthrough runs in minutes on a CPU: the same commands, fewer episodes and
# steps. Everything else is exactly what README.md shows.
SCALE_DOWN = {"--episodes": "2", "--steps": "3", "--workers": "1"}


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    """The `Use it` block of README.md, line by line, in a fresh folder (scaled down)."""
    import os
    import subprocess
    import sys

    block = _readme_block("## Use it")
    lines = [c.text for c in commands_in_markdown(block, "README.md") if c.complete]
    assert any(line.startswith("tether serve") for line in lines)
    tether = [sys.executable, "-m", "tether.cli"]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    background = []
    try:
        for line in lines:
            words = _scaled(shlex.split(line, comments=True))
            if words[-1] == "&":
                background.append(subprocess.Popen(
                    tether + words[1:-1], cwd=tmp_path, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                continue
            proc = subprocess.run(tether + words[1:], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"$ {' '.join(words)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    finally:
        for proc in background:
            proc.terminate()
            proc.communicate(timeout=30)


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    start = section.index("```")
    end = section.index("```", start + 3)
    return section[start : end + 3]


def _scaled(words: list[str]) -> list[str]:
    out = list(words)
    for i, word in enumerate(out[:-1]):
        if word in SCALE_DOWN:
            out[i + 1] = SCALE_DOWN[word]
    if out[:2] == ["tether", "train"] and "--steps" not in out:
        out += ["--steps", SCALE_DOWN["--steps"]]
    if out[:2] == ["tether", "twin"] and "--episodes" in out:
        out[out.index("--episodes") + 1] = "1"
    return out
