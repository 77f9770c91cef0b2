"""Test harness: start Flower processes on loopback, run the app with ``flwr run``, and stop
every process started, including their descendants (flwr-serverapp, flwr-clientapp,
flwr-simulation, Ray), by PID, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parents[1]
BIN = Path(sys.executable).parent

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: no telemetry, no update check, no runtime
    dependency installation, a private FLWR_HOME, and this checkout on the path."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(BIN), env.get("PATH", "")))
    return env


def write_connection(flwr_home: Path, name: str, port: int, options: str = "") -> None:
    """``$FLWR_HOME/config.toml`` with one insecure loopback SuperLink connection."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n{options}'
    )


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id), from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def family(roots: list[int]) -> set[int]:
    """The roots, their descendants, and every process in their sessions."""
    table = _process_table()
    found = {pid for pid in roots if pid in table}
    sessions = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, sid) in table.items():
            if pid not in found and (ppid in found or sid in sessions):
                found.add(pid)
                changed = True
    return found


class Processes:
    """Processes a test starts; ``stop_all`` ends them and everything they started."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.log_dir)
        proc._fedhd_log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 10.0) -> set[int]:
        """SIGTERM every started process and its family, then SIGKILL what is left.
        Returns the PIDs that were still alive afterwards (should be empty)."""
        pids = family([p.pid for p in self.procs])
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for p in self.procs:
                p.poll()
            if not any(_alive(pid) for pid in pids):
                break
            time.sleep(0.2)
        pids |= family([p.pid for p in self.procs if p.poll() is None])
        for pid in pids:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            p._fedhd_log.close()  # type: ignore[attr-defined]
        time.sleep(0.2)
        return {pid for pid in pids if _alive(pid)}

    def stop(self, proc: subprocess.Popen, grace: float = 30.0) -> None:
        """SIGTERM one started process and its family (a graceful leave), then wait."""
        for pid in family([proc.pid]):
            _signal(pid, signal.SIGTERM)
        proc.wait(timeout=grace)

    def logs(self) -> str:
        out = []
        for f in sorted(self.log_dir.glob("*.log")):
            out.append(f"===== {f.name} =====\n" + f.read_text(errors="replace")[-4000:])
        return "\n".join(out)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Wait until the SuperLink's HTTP API answers on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError as e:
            if getattr(e, "code", None) is not None:  # an HTTP error: it is up
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout}s")


@contextmanager
def flower_processes(tmp_path: Path) -> Iterator[tuple[Processes, Path, dict[str, str]]]:
    """(processes, FLWR_HOME, env); every process is stopped on exit, even on failure."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    procs = Processes(tmp_path)
    try:
        yield procs, home, flower_env(home)
    finally:
        survivors = procs.stop_all()
        if survivors:
            raise RuntimeError(f"processes still alive after teardown: {sorted(survivors)}")


def flwr_run(connection: str, run_config: dict[str, object], env: dict[str, str],
             log_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    """``flwr run <app> <connection> --stream`` with run-config overrides; waits for the end."""
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    cmd = [str(BIN / "flwr"), "run", str(APP_DIR), connection, "--stream",
           "--run-config", overrides]
    with open(log_dir / "flwr-run.log", "wb") as log:
        return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=log_dir, check=False,
                              start_new_session=True)
