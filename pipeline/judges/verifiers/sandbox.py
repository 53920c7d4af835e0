"""Run untrusted Python (a response's code plus a pair's unit tests) in a limited subprocess.

What each run gets:
- a fresh temporary directory as its working directory, removed afterwards;
- `python -I -S`: isolated mode (no PYTHON* variables, no user site, no script directory on
  sys.path) without site-packages, so only the standard library is importable;
- a scrubbed environment (PATH, LANG, HOME/TMPDIR = the temp dir), stdin from /dev/null, stdout
  and stderr to files in the temp dir (bounded by the file-size limit), its own session, so a
  timeout kills every process it started;
- resource limits set with `resource.setrlimit` by the harness before any untrusted code is read:
  CPU seconds, address space, file size, no core dumps, number of processes. They are set in the
  child rather than in a `preexec_fn`: judges run inside multi-threaded processes (Prefect, vLLM),
  where `preexec_fn` can deadlock the forked child;
- an audit hook (PEP 578), installed before the untrusted code runs and impossible to remove from
  Python, that raises on every `socket.*` event (socket creation, connect, bind, DNS lookups, so
  `socket.create_connection` and `urllib` fail), `http.client.connect`, starting processes
  (subprocess, os.system, exec*, spawn*, fork, posix_spawn, `_posixsubprocess`), `os.kill`,
  loading `ctypes`, `fchdir`, and writing, renaming or deleting files outside the temp directory;
- a wall-clock timeout.

What it does NOT protect against: audit hooks are a tripwire, not a security boundary. Code that
is written to escape (a C extension already in the stdlib used in an unforeseen way, interpreter
memory corruption) can bypass them; an `os.open(..., dir_fd=...)` relative to a directory opened
elsewhere is not seen as outside; reading files outside the temp directory is allowed (imports
need it); RLIMIT_NPROC is not enforced for root. Run verifiers on adversarial data inside a
container or VM without network (nsjail, gVisor, a network-less pod) as well; this sandbox is for
model-written code that is wrong, slow, greedy or careless, not for attackers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Exit codes the harness uses for each way untrusted code can fail.
_EXIT_REASONS = {11: "assertion", 12: "syntax", 13: "blocked", 14: "memory", 15: "exit", 16: "error"}

_HARNESS = r'''
import os, resource, sys
def _limit(which, value):
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))
_cpu = {cpu_s}
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
_limit(resource.RLIMIT_AS, {memory_bytes})
_limit(resource.RLIMIT_FSIZE, {fsize_bytes})
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_NPROC, {nproc})
_ROOT = os.path.realpath(os.getcwd())
with open("solution.py", encoding="utf-8") as f:
    _solution = f.read()
with open("tests.py", encoding="utf-8") as f:
    _tests = f.read()
os.remove(__file__)  # the nonce below must not be readable by the code under test
_NONCE = {nonce!r}

class SandboxViolation(PermissionError):
    pass

_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PROCESS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "http.client.connect",
            "ctypes.dlopen", "ctypes.dlsym")
_PATHS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
          "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "os.chdir")

def _inside(path):
    if isinstance(path, int):
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(os.getcwd(), os.fspath(path)))
    return real == _ROOT or real.startswith(_ROOT + os.sep) or real == "/dev/null"

def _hook(event, args):
    if event.startswith("socket.") or event in _PROCESS:
        raise SandboxViolation(f"sandbox: {{event}} is blocked")
    if event == "import" and args[0] in ("ctypes", "_ctypes", "_posixsubprocess"):
        raise SandboxViolation(f"sandbox: importing {{args[0]}} is blocked")
    if event == "os.chdir" and isinstance(args[0], int):
        raise SandboxViolation("sandbox: os.fchdir is blocked")
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2] or 0
        writes = bool(flags & _WRITE) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
        if writes and not _inside(args[0]):
            raise SandboxViolation(f"sandbox: writing {{args[0]!r}} outside the work dir is blocked")
    elif event in _PATHS:
        for arg in args[:2]:
            if isinstance(arg, (str, bytes, os.PathLike)) and not _inside(arg):
                raise SandboxViolation(f"sandbox: {{event}} outside the work dir is blocked")

sys.stdout.write("<<start>>\n")
sys.stdout.flush()
sys.addaudithook(_hook)
_ns = {{"__name__": "__main__", "__builtins__": __builtins__}}
_code = 0
try:
    exec(compile(_solution, "solution.py", "exec"), _ns)
    exec(compile(_tests, "tests.py", "exec"), _ns)
except AssertionError as exc:
    print(f"AssertionError: {{exc}}", file=sys.stderr); _code = 11
except SyntaxError as exc:
    print(f"SyntaxError: {{exc}}", file=sys.stderr); _code = 12
except SandboxViolation as exc:
    print(f"{{exc}}", file=sys.stderr); _code = 13
except MemoryError:
    print("MemoryError", file=sys.stderr); _code = 14
except SystemExit as exc:
    print(f"SystemExit: {{exc.code}}", file=sys.stderr); _code = 15
except BaseException as exc:
    print(f"{{type(exc).__name__}}: {{exc}}", file=sys.stderr); _code = 16
if _code == 0:
    sys.stdout.write("\n" + _NONCE + "\n")
sys.stdout.flush()
os._exit(_code)
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits: wall clock, CPU seconds, address space, output file size, processes."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    """Defaults to the wall-clock timeout rounded up."""
    memory_mb: int = 1024
    fsize_mb: int = 16
    nproc: int = 1


@dataclass(frozen=True)
class SandboxResult:
    """`status`: pass | fail | timeout | error (the harness itself did not run: undecidable)."""

    status: str
    reason: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    stderr_tail: str = ""


def _read_tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
            "TMPDIR": workdir, "PYTHONHASHSEED": "0"}


def run_python(solution: str, tests: str, limits: SandboxLimits | None = None,
               *, python: str | None = None) -> SandboxResult:
    """Run `solution` then `tests` in one namespace; pass = the tests ran to the end."""
    limits = limits or SandboxLimits()
    cpu_s = limits.cpu_s or max(1, int(limits.timeout_s + 0.999))
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="synpref-sandbox-")
    root = Path(workdir)
    try:
        (root / "solution.py").write_text(solution, encoding="utf-8")
        (root / "tests.py").write_text(tests, encoding="utf-8")
        (root / "_harness.py").write_text(_HARNESS.format(
            cpu_s=cpu_s, memory_bytes=limits.memory_mb * 2**20, fsize_bytes=limits.fsize_mb * 2**20,
            nproc=limits.nproc, nonce=nonce), encoding="utf-8")
        start = time.monotonic()
        with open(root / "stdout.txt", "wb") as out, open(root / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-B", "_harness.py"], cwd=workdir,
                env=_clean_env(workdir), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True)
            try:
                rc = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return SandboxResult("timeout", f"wall clock over {limits.timeout_s:g}s", None,
                                     round(time.monotonic() - start, 3),
                                     _read_tail(root / "stderr.txt"))
        seconds = round(time.monotonic() - start, 3)
        stdout = _read_tail(root / "stdout.txt", 4096)
        stderr = _read_tail(root / "stderr.txt")
        return _classify(rc, stdout, stderr, nonce, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _classify(rc: int, stdout: str, stderr: str, nonce: str, seconds: float) -> SandboxResult:
    if rc == 0 and nonce in stdout:
        return SandboxResult("pass", "", rc, seconds, stderr)
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxResult("timeout", "CPU time limit", rc, seconds, stderr)
    if "<<start>>" not in stdout and rc not in _EXIT_REASONS:
        # The harness never reached the code under test: a broken interpreter or limits too low.
        return SandboxResult("error", f"harness did not start (exit {rc})", rc, seconds, stderr)
    if rc == -signal.SIGXFSZ:
        return SandboxResult("fail", "file size limit", rc, seconds, stderr)
    if rc == 0:
        return SandboxResult("fail", "exited before the tests finished", rc, seconds, stderr)
    reason = _EXIT_REASONS.get(rc, f"signal {-rc}" if rc < 0 else f"exit {rc}")
    return SandboxResult("fail", reason, rc, seconds, stderr)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the run's whole session; only while its leader is alive, so the group id is its own."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
