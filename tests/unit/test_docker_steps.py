"""The Docker steps in the README (and the compose file's own header) work in their order.

No Docker daemon here, so this checks what Compose would refuse first: every variable the
compose file requires with ``${VAR:?…}`` must be set before the first ``docker compose``
command, since Compose interpolates the whole file for every command, whatever service it
names. The steps are walked as a shell would see them: ``export``, ``VAR=… command`` and a
``.env`` written by a here-document set variables; Compose reads ``.env`` by itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "docker-compose.yml"
README = ROOT / "README.md"

_REQUIRED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):?\?[^}]*\}")
_ASSIGNMENT = re.compile(r"([A-Z_][A-Z0-9_]*)=(\S+)")


def required_variables(node: Any) -> set[str]:
    """Every ``${VAR:?…}`` (or ``${VAR?…}``) in the values of a parsed compose file."""
    if isinstance(node, dict):
        return set().union(*(required_variables(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(required_variables(value) for value in node))
    if isinstance(node, str):
        return set(_REQUIRED.findall(node))
    return set()


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = " ".join((pending + raw).split())
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def unset_before_use(steps: str, required: set[str]) -> list[str]:
    """For each ``docker compose`` command, the required variables not set when it runs."""
    environment: set[str] = set()
    dotenv: set[str] = set()
    problems = []
    lines = iter(logical_lines(steps))
    for line in lines:
        heredoc = re.search(r"cat > \.env\)? <<'?(\w+)'?", line)
        if heredoc is not None:
            for body in lines:
                if body == heredoc.group(1):
                    break
                match = _ASSIGNMENT.match(body)
                if match is not None:
                    dotenv.add(match.group(1))
            continue
        if line.startswith("export "):
            environment |= {name for name, _ in _ASSIGNMENT.findall(line)}
            continue
        if "docker compose" in line:
            prefix = line.split("docker compose", 1)[0]
            inline = {name for name, _ in _ASSIGNMENT.findall(prefix)}
            missing = required - environment - dotenv - inline
            if missing:
                problems.append(f"{line[:60]}…: {', '.join(sorted(missing))} not set")
    return problems


def readme_docker_steps() -> str:
    """The first shell block of the README's "Docker" section."""
    section = README.read_text(encoding="utf-8").split("\n## Docker\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def compose_header_steps() -> str:
    """The "First start" steps in the compose file's header comment, without the ``#``."""
    header = COMPOSE.read_text(encoding="utf-8").split("# First start", 1)[1]
    header = header.split("#   4. ", 1)[0]
    return "\n".join(line.lstrip("#").strip() for line in header.splitlines())


def test_the_compose_file_requires_the_two_shared_secrets() -> None:
    """What the walk checks against: the compose file's required variables."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert required_variables(compose) == {"PARCEL_DATABASE_PASSWORD", "PARCEL_ENCRYPTION_KEY"}


@pytest.mark.parametrize("steps", [readme_docker_steps, compose_header_steps],
                         ids=["readme", "compose-header"])
def test_every_required_variable_is_set_before_compose_needs_it(steps: Any) -> None:
    """Following the steps in order, no docker compose command meets an unset ${VAR:?}."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    text = steps()
    assert "docker compose" in text
    assert unset_before_use(text, required_variables(compose)) == []


@pytest.mark.parametrize(
    ("steps", "problems"),
    [
        # The order the README had: Synapse first, the secrets exported only at the end.
        ("docker compose up -d synapse\nexport A=1 B=2\ndocker compose up -d\n",
         ["docker compose up -d synapse…: A, B not set"]),
        ("export A=1\nB=2 docker compose up -d\ndocker compose ps\n",
         ["docker compose ps…: B not set"]),
        ("(umask 077 && set -C && cat > .env) <<EOF\nA=$(x)\nB=$(y)\nEOF\ndocker compose ps\n",
         []),
        ("cat > .env <<EOF\nA=1\nEOF\ndocker compose \\\n  up -d\n",
         ["docker compose up -d…: B not set"]),
    ],
)
def test_the_walk_catches_a_variable_set_too_late(steps: str, problems: list[str]) -> None:
    """The checker itself: a variable set after the command that needs it is reported."""
    assert unset_before_use(steps, {"A", "B"}) == problems
