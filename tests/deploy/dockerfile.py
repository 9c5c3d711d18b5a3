"""A small Dockerfile reader for the deployment tests.

It knows enough of the Dockerfile syntax for this project's Dockerfile: parser directives, comments, line
continuations (with comment lines inside them dropped, as Docker does), stages (`FROM image AS name`) and global
`ARG` defaults used in `FROM`.

The serving install is the one `RUN` of the `builder` stage directly under a comment holding
``lstm-serve:install``. `serving_install_command()` returns it (``pip install --no-cache-dir .``): run in the
repository root it installs what the image has (the builder's WORKDIR holds pyproject.toml, README.md, model/ and
service/ as the repository root does). To repeat it in a fresh virtualenv::

    argv = serving_install_argv()          # ["pip", "install", "--no-cache-dir", "."]
    subprocess.run([venv_python, "-m", *argv], cwd=REPO_ROOT, check=True)
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
INSTALL_MARKER = "lstm-serve:install"
BUILDER_STAGE = "builder"

_DIRECTIVE = re.compile(r"^#\s*(syntax|escape|check)\s*=", re.IGNORECASE)
_ARG_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    value: str  # the arguments, continuation lines joined with single spaces
    line: int  # 1-based line of the keyword
    comments: tuple[str, ...] = ()  # the comment lines directly above, without their '#'

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, RUN), or None for shell form."""
        return _json_array(self.value)


@dataclass
class Stage:
    index: int
    base: str  # as written, e.g. ${PYTHON_IMAGE}
    resolved_base: str  # with global ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword.upper()]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV of this stage (key=value form; later values win)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            tokens = shlex.split(ins.value)
            if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
                out[tokens[0]] = " ".join(tokens[1:])
                continue
            for token in tokens:
                key, _, value = token.partition("=")
                out[key] = value
        return out


def _json_array(value: str) -> list[str] | None:
    if not value.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
        return parsed
    return None


def parse(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction of the Dockerfile, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    instructions: list[Instruction] = []
    comments: list[str] = []
    in_header = True  # parser directives are only valid before anything else
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped:
            comments = []
            in_header = False
            i += 1
            continue
        if stripped.startswith("#"):
            if not (in_header and _DIRECTIVE.match(stripped)):
                comments.append(stripped[1:].strip())
            i += 1
            continue
        in_header = False
        start = i
        parts: list[str] = []
        text = stripped
        while True:
            continued = text.endswith("\\")
            parts.append(text[:-1].strip() if continued else text)
            i += 1
            if not continued:
                break
            # Inside a continuation Docker drops comment lines and empty lines.
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1
            if i >= len(lines):
                break
            text = lines[i].strip()
        joined = " ".join(p for p in parts if p)
        keyword, _, value = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start + 1, tuple(comments)))
        comments = []
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            key, _, default = ins.value.partition("=")
            out[key.strip()] = default.strip().strip('"')
    return out


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The build stages, in order; the last one is what `docker build` without --target produces."""
    instructions = parse(path)
    args = global_args(instructions)
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            tokens = ins.value.split()
            tokens = [t for t in tokens if not t.startswith("--platform")]
            base = tokens[0]
            name = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else None
            resolved = _ARG_REF.sub(lambda m: args.get(m.group(1) or m.group(2), m.group(0)), base)
            result.append(Stage(len(result), base, resolved, name))
        elif result:
            result[-1].instructions.append(ins)
    return result


def stage(name: str, path: Path = DOCKERFILE) -> Stage:
    for s in stages(path):
        if s.name == name:
            return s
    raise KeyError(f"no stage named {name!r} in {path}")


def serving_install_instruction(path: Path = DOCKERFILE) -> Instruction:
    """The RUN of the builder stage marked with `# lstm-serve:install`."""
    marked = [i for i in stage(BUILDER_STAGE, path).all("RUN") if any(INSTALL_MARKER in c for c in i.comments)]
    if len(marked) != 1:
        raise ValueError(f"expected one RUN marked {INSTALL_MARKER!r} in stage {BUILDER_STAGE!r}, found {len(marked)}")
    return marked[0]


def serving_install_command(path: Path = DOCKERFILE) -> str:
    """The serving install command of the image, e.g. ``pip install --no-cache-dir .``.

    It must be one plain shell command (no `&&`, `;`, pipes or exec form), so that a test can run it as is.
    """
    ins = serving_install_instruction(path)
    if ins.exec_form() is not None:
        raise ValueError(f"line {ins.line}: the install RUN must be in shell form")
    if re.search(r"&&|\|\||[;|]", ins.value):
        raise ValueError(f"line {ins.line}: the install RUN must be a single command: {ins.value!r}")
    return ins.value


def serving_install_argv(path: Path = DOCKERFILE) -> list[str]:
    """`serving_install_command()` split into arguments; the first is ``pip``."""
    argv = shlex.split(serving_install_command(path))
    if not argv or argv[0] != "pip":
        raise ValueError(f"the install command should start with pip: {argv}")
    return argv
