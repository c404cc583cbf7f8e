"""The built artifact, installed: sdist, a wheel built from that sdist, a fresh virtualenv outside the checkout.

``installation()`` builds and installs once per test run and hands every caller the same result, also
across trial's ``-j`` workers: they share one directory under the system temp directory (named after the
run's trial process and a digest of the packaged sources) and take turns through a lock file.  A later run
removes the directories of runs whose trial process is gone.

Programs of the installation run with :meth:`Installation.env`: no ``PYTHONPATH``, no user site, so the
code they load is the one the wheel installed.  Building and installing need the package index (PyPI, or
what pip is configured with); when it cannot be reached the tests are skipped with the reason, never
passed.  Any other failure is a test failure with the tool's output.

``XMPPCLUSTER_TEST_VENV=/path/to/venv`` tests an installation made elsewhere (an installed node's
virtualenv) instead: nothing is built, and the tests that need the wheel itself are skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from twisted.trial.unittest import SkipTest

from tests.support.process import Twistd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "xmppcluster-installed-"
#: Extras installed with the wheel (the cluster test may run on PostgreSQL).
EXTRAS = "postgres"
#: What goes into the sdist: a change to any of these is a different artifact.
PACKAGED = ("xmppcluster", os.path.join("twisted", "plugins"), "setup.cfg", "pyproject.toml", "README.rst",
            "MANIFEST.in")
#: An existing virtualenv to test instead of building one.
GIVEN_VENV = "XMPPCLUSTER_TEST_VENV"
LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


class BuildFailed(AssertionError):
    """Building or installing the artifact failed for a reason other than the network."""


@dataclass(frozen=True)
class Installation:
    """One build and its virtualenv; ``directory`` is outside the checkout."""

    directory: str
    sdist: str
    wheel: str
    venv: str
    timings: dict[str, float] = field(default_factory=dict)

    def bin(self, name: str) -> str:
        """A program of the virtualenv (``twistd``, ``xmppcluster``, ``python``)."""
        return os.path.join(self.venv, "bin", name)

    def env(self) -> dict[str, str]:
        """The environment for programs of the installation: nothing points back at the checkout."""
        env = {k: v for k, v in os.environ.items() if k not in LEAKY}
        env["PYTHONNOUSERSITE"] = "1"
        env["PATH"] = os.path.join(self.venv, "bin") + os.pathsep + env.get("PATH", "")
        return env

    def run(self, program: str, *args: str, cwd: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a program of the virtualenv from ``cwd``; its result with text output."""
        return subprocess.run([self.bin(program), *args], cwd=cwd, env=self.env(), input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def can_import(self, module: str) -> bool:
        """Whether the installation's interpreter imports ``module`` (an optional dependency)."""
        return self.run("python", "-c", f"import {module}", cwd=self.directory).returncode == 0

    def workdir(self, prefix: str) -> str:
        """A fresh directory outside the checkout for one test's files."""
        return tempfile.mkdtemp(prefix=prefix, dir=self.directory)


class InstalledTwistd(Twistd):
    """``venv/bin/twistd -n xmppcluster`` from the installation: cwd outside the checkout, no PYTHONPATH."""

    def __init__(self, installation: Installation, directory: str, config_path: str, *args: str,
                 name: str = "twistd") -> None:
        self.directory = directory
        self.log_path = os.path.join(directory, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [installation.bin("twistd"), "-n", "--pidfile=", "xmppcluster", "--config", config_path, *args],
            cwd=directory, stdout=self.log, stderr=subprocess.STDOUT, env=installation.env())


_cached: Installation | None = None


def installation(*, venv: bool = True) -> Installation:
    """The run's installation, built on first use; SkipTest when the index is unreachable or a tool missing.

    ``venv=False``: only the sdist and the wheel are needed (a failed install does not fail the caller).
    Blocking (tens of seconds on first use): call it from a thread (``deferToThread``).
    """
    global _cached
    if _cached is not None:
        found = _cached
    else:
        state = _shared_state()
        if state["status"] == "skip":
            raise SkipTest(state["reason"])
        if state["status"] == "fail" and (venv or "wheel" not in state):
            raise BuildFailed(state["reason"])
        found = Installation(state["directory"], state.get("sdist", ""), state.get("wheel", ""), state["venv"],
                             state["timings"])
        if state["status"] == "ready":
            _cached = found
    if not venv and not found.wheel:
        raise SkipTest(f"{GIVEN_VENV} is set: testing {found.venv}, not a wheel built here")
    return found


def missing_tool() -> str | None:
    """Why this interpreter cannot build or make a virtualenv, or None."""
    for module, why in (("build", "the 'build' package is not installed (it is in the test extras)"),
                        ("pip", "pip is not installed"),
                        ("venv", "the venv module is missing (on Debian: apt-get install python3-venv)")):
        if importlib.util.find_spec(module) is None:
            return f"cannot test the installed package: {why}"
    return None


def _pip_targets_other_pythons() -> bool:
    """Whether this pip has ``--python`` (22.3+): it can install into a virtualenv made without pip."""
    from pip import __version__

    return tuple(int(p) for p in __version__.split(".")[:2] if p.isdigit()) >= (22, 3)


def _run_owner() -> int:
    """The pid of the trial process running this test run (a -j worker's parent)."""
    return os.getppid() if os.path.basename(sys.argv[0]).startswith("workertrial") else os.getpid()


def source_digest() -> str:
    """A digest of every file that goes into the sdist."""
    digest = hashlib.sha256()
    for entry in PACKAGED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            files = [path]
        else:
            files = []
            for directory, subdirs, names in os.walk(path):
                subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
                files += [os.path.join(directory, n) for n in sorted(names)
                          if not n.endswith((".pyc", ".cache"))]
        for name in files:
            digest.update(os.path.relpath(name, ROOT).encode() + b"\0")
            with open(name, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()[:12]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(base: str) -> None:
    """Remove the directories (and lock files) of earlier runs whose trial process is gone."""
    for name in os.listdir(base):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path = os.path.join(base, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _shared_state() -> dict:
    base = tempfile.gettempdir()
    if os.path.realpath(base).startswith(os.path.realpath(ROOT) + os.sep):
        return {"status": "fail", "reason": f"the temp directory {base} is inside the checkout {ROOT}"}
    key = f"{PREFIX}{_run_owner()}-{source_digest()}"
    directory = os.path.join(base, key)
    with open(directory + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state_path = os.path.join(directory, "state.json")
        if os.path.exists(state_path):
            with open(state_path) as f:
                return json.load(f)
        _sweep(base)
        os.makedirs(directory, exist_ok=True)
        state = _build_and_install(directory)
        with open(state_path, "w") as f:
            json.dump(state, f)
        return state


def _step(what: str, command: list[str], cwd: str, env: dict[str, str], timeout: float) -> None:
    """Run one build step; BuildFailed (or SkipTest when offline) with its output when it fails."""
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BuildFailed(f"{what} took more than {timeout} s: {' '.join(command)}") from e
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        unreachable = _index_unreachable(cwd, env)
        if unreachable:
            raise SkipTest(f"cannot test the installed package: {what} failed and the package index is not "
                           f"reachable ({unreachable}):\n{output[-1500:]}")
        raise BuildFailed(f"{what} failed ({result.returncode}): {' '.join(command)}\n{output}")


def _index_unreachable(cwd: str, env: dict[str, str]) -> str | None:
    """Why pip cannot download from its configured index right now (no cache), or None when it can."""
    with tempfile.TemporaryDirectory(dir=cwd) as scratch:
        probe = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-cache-dir",
                                "--dest", scratch, "setuptools"], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=300)
    if probe.returncode == 0:
        return None
    lines = [line for line in (probe.stdout + probe.stderr).splitlines() if line.strip()]
    return f"pip download setuptools: {lines[-1] if lines else probe.returncode}"


def _build_and_install(directory: str) -> dict:
    """sdist, wheel from the sdist, fresh venv, wheel installed: the state every worker reads."""
    given = os.environ.get(GIVEN_VENV)
    if given:
        given = os.path.abspath(given)
        missing = [p for p in ("python", "twistd", "xmppcluster") if not os.access(os.path.join(given, "bin", p),
                                                                                   os.X_OK)]
        if missing:
            return {"status": "fail", "reason": f"{GIVEN_VENV}={given}: no bin/{', bin/'.join(missing)} there"}
        return {"status": "ready", "directory": directory, "venv": given, "timings": {}}
    reason = missing_tool()
    if reason:
        return {"status": "skip", "reason": reason}
    dist, venv = os.path.join(directory, "dist"), os.path.join(directory, "venv")
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env.setdefault("PIP_NO_INPUT", "1")
    timings: dict[str, float] = {}
    state: dict = {"directory": directory, "venv": venv, "timings": timings}
    try:
        start = time.monotonic()
        # No --sdist/--wheel: build makes the sdist, then the wheel from the unpacked sdist (proving it whole).
        _step("python -m build", [sys.executable, "-m", "build", "--outdir", dist, ROOT], directory, env, 600)
        timings["build"] = time.monotonic() - start
        built = sorted(os.listdir(dist))
        sdists = [os.path.join(dist, n) for n in built if n.endswith(".tar.gz")]
        wheels = [os.path.join(dist, n) for n in built if n.endswith(".whl")]
        if len(sdists) != 1 or len(wheels) != 1:
            raise BuildFailed(f"expected one sdist and one wheel in {dist}, found {built}")
        state.update(sdist=sdists[0], wheel=wheels[0])
        # This pip installs into a virtualenv made without one (seconds faster than ensurepip's copy);
        # --no-compile: each module is compiled when first imported, not all of Twisted up front.
        fast = _pip_targets_other_pythons()
        start = time.monotonic()
        _step("python -m venv", [sys.executable, "-m", "venv", *(["--without-pip"] if fast else []), venv],
              directory, env, 300)
        timings["venv"] = time.monotonic() - start
        pip = [sys.executable, "-m", "pip", "--python", os.path.join(venv, "bin", "python")] if fast else \
            [os.path.join(venv, "bin", "python"), "-m", "pip"]
        start = time.monotonic()
        _step("pip install (the wheel)", [*pip, "install", "--quiet", "--no-compile", f"{wheels[0]}[{EXTRAS}]"],
              directory, env, 600)
        timings["install"] = time.monotonic() - start
    except SkipTest as e:
        return {**state, "status": "skip", "reason": str(e)}
    except BuildFailed as e:
        return {**state, "status": "fail", "reason": str(e)}
    return {**state, "status": "ready"}
