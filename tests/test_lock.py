"""constraints.txt, the pinned development set, agrees with pyproject.toml and is written faithfully."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+ (the lock is made on 3.11)")

ROOT = Path(__file__).resolve().parents[1]


def _lock_module():
    spec = importlib.util.spec_from_file_location("lock", ROOT / "tools" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> list[Requirement]:
    pyproject = _pyproject()
    project, build = pyproject["project"], pyproject["build-system"]["requires"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["dev"] + extras["tensorboard"] + build]


def test_every_requirement_the_makefile_installs_is_pinned_inside_its_range():
    lock = _lock_module()
    pins = lock.read_lock(ROOT / "constraints.txt")
    for requirement in _requirements():
        name = lock.canonical(requirement.name)
        assert name in pins, f"{name} is required by pyproject.toml but not pinned: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}: run make lock"
        )


def test_the_makefile_installs_through_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert '-c $(LOCK) -e "$(EXTRAS)"' in makefile and "LOCK := constraints.txt" in makefile
    assert "tools/lock.py check $(LOCK) $(VENV)" in makefile


def test_write_then_read_gives_this_environment_without_local_labels(tmp_path, monkeypatch):
    lock = _lock_module()
    monkeypatch.setattr(lock, "installed", lambda: {"torch": "2.13.0", "pip": "26.3", "peft": "0.21.2"})
    path = tmp_path / "constraints.txt"
    lock.write(path)
    assert lock.read_lock(path) == {"torch": "2.13.0", "pip": "26.3", "peft": "0.21.2"}
    assert path.read_text().startswith("# The package set")
    lock.check(path)
    monkeypatch.setattr(lock, "installed", lambda: {"torch": "2.13.0", "pip": "26.3", "peft": "0.22.0"})
    with pytest.raises(SystemExit, match=r"peft 0.22.0 \(pinned 0.21.2\)"):
        lock.check(path)


def test_installed_names_are_canonical_and_leave_out_the_project():
    found = _lock_module().installed()
    assert "trainformers" not in found and "torch" in found and "+" not in found["torch"]
    assert all(name == name.lower() and "_" not in name for name in found)


def test_floors_pin_every_runtime_dependency_at_its_lower_bound_but_torch(tmp_path):
    lock = _lock_module()
    lock.floors(tmp_path / "floors.txt")
    pins = lock.read_lock(tmp_path / "floors.txt")
    project = _pyproject()["project"]
    names = {lock.canonical(Requirement(r).name) for r in project["dependencies"]}
    assert set(pins) == names - {"torch"}
    for requirement in map(Requirement, project["dependencies"]):
        name = lock.canonical(requirement.name)
        if name != "torch":
            assert str(requirement.specifier) == f">={pins[name]}", f"{requirement}: give {name} a plain lower bound"
