"""Write or compare constraints.txt: the exact package set the test suite last passed with.

Run by the Makefile with the Python of a fresh environment that holds the newest releases
(`make test-latest`, `make lock`); it reads that environment's installed distributions.

    python tools/lock.py diff constraints.txt .venv-latest    # what the newest releases change
    python tools/lock.py write constraints.txt .venv-latest   # pin them (after the suite passed)
    python tools/lock.py check constraints.txt .venv          # every pinned package installed as pinned
    python tools/lock.py floors floors.txt .venv-oldest       # pyproject's lower bounds as pins

Not `pip freeze`: it leaves out pip and setuptools (which tensorboard needs at run time), and it
writes torch's local label (`2.13.0+cpu`), which no other machine's wheel carries.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

PROJECT = "trainformers"
HEADER = """\
# The package set the whole test suite last passed with; `make test`, `make train` and CI install
# exactly this (pip install -c constraints.txt). Refresh it with `make lock`, which installs the
# newest releases into .venv-latest, runs the suite there and rewrites this file only if it passes.
# Python {python}; torch itself is installed first from the pin in the Makefile.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every distribution in this environment but the project, name -> public version (no +local)."""
    found = {canonical(d.metadata["Name"]): d.version.split("+")[0] for d in distributions()}
    found.pop(PROJECT, None)
    return found


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def diff(lock: Path) -> None:
    old, new = read_lock(lock), installed()
    changes = [
        f"  {n}: {old.get(n, '-')} -> {new.get(n, '-')}"
        for n in sorted(old.keys() | new.keys())
        if old.get(n) != new.get(n)
    ]
    print(f"newest releases vs {lock}:" if changes else f"the newest releases are the ones in {lock}")
    print("\n".join(changes))


def check(lock: Path) -> None:
    pins, have = read_lock(lock), installed()
    wrong = [f"{n} {have.get(n, 'missing')} (pinned {v})" for n, v in sorted(pins.items()) if have.get(n) != v]
    if wrong:
        sys.exit(f"{sys.prefix} does not match {lock}: {', '.join(wrong)}; rebuild it with make clean venv")


def floors(out: Path) -> None:
    """Pin every runtime dependency of pyproject.toml at its lower bound (torch stays at the Makefile's).

    Each must be a plain `name>=version` (tests/test_lock.py holds that), so no `packaging`, which a
    fresh environment lacks, is needed to read it.
    """
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pins = []
    for requirement in pyproject["project"]["dependencies"]:
        name, lower = (part.strip() for part in requirement.split(">=", 1))
        if canonical(name) != "torch":
            pins.append(f"{canonical(name)}=={lower}")
    out.write_text("\n".join(pins) + "\n")
    print(f"pyproject's floors: {' '.join(pins)}")


def write(lock: Path) -> None:
    python = ".".join(map(str, sys.version_info[:2]))
    lines = [f"{name}=={version}" for name, version in sorted(installed().items())]
    lock.write_text(HEADER.format(python=python) + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {lock}")


if __name__ == "__main__":
    commands = {"diff": diff, "write": write, "check": check, "floors": floors}
    if len(sys.argv) != 4 or sys.argv[1] not in commands:
        sys.exit("usage: python tools/lock.py diff|write|check|floors FILE VENV (run with VENV's python)")
    if Path(sys.prefix).resolve() != Path(sys.argv[3]).resolve():
        sys.exit(f"tools/lock.py reads the environment it runs in; run it with {sys.argv[3]}/bin/python")
    commands[sys.argv[1]](Path(sys.argv[2]))
