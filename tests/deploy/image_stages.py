"""The Dockerfile read as data, without Docker: its stages, their instructions, the
shell commands of their RUN lines, and the build context ``.dockerignore`` leaves."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction of the stage, in order."""
        return [args for kw, args in self.instructions if kw == keyword]

    def commands(self) -> list[list[str]]:
        """Every shell command of the stage's RUN lines (split on ``&&``), as argv lists."""
        return [
            shlex.split(command)
            for run in self.arguments("RUN")
            for command in run.split("&&")
            if command.strip()
        ]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments and blank lines, also inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of the Dockerfile, in order (global ARGs before the first FROM dropped)."""
    found: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), flags=re.IGNORECASE)
            assert match, line
            found.append(Stage(match[2] or str(len(found)), match[1]))
        elif found:
            found[-1].instructions.append((keyword, args.strip()))
    return found


def pip_subcommand(argv: list[str]) -> tuple[str, list[str]] | None:
    """``("install", options...)`` for ``pip install ...`` or ``python -m pip install ...``."""
    if argv[:1] == ["pip"] and len(argv) > 1:
        return argv[1], argv[2:]
    if argv[:3] == ["python", "-m", "pip"] and len(argv) > 3:
        return argv[3], argv[4:]
    return None


def build_context(destination: Path) -> Path:
    """A copy of what ``docker build .`` sends: the repository less ``.dockerignore``'s
    patterns (which here are plain paths and ``**/`` globs)."""
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(relative: str) -> bool:
        name = relative.rsplit("/", 1)[-1]
        for pattern in patterns:
            if pattern.startswith("**/"):
                if fnmatch.fnmatch(name, pattern[3:]):
                    return True
            elif fnmatch.fnmatch(relative, pattern):
                return True
        return False

    def ignore(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(ROOT)
        return {n for n in names if ignored(str(base / n) if str(base) != "." else n)}

    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination
