"""Run a command in a child process and stream its JSON-lines progress, without Qt.

The Slicer module runs the network out of process (``PythonSlicer -m LiverTumorSegLib segment
... --progress jsonl``) so that a crash or an out-of-memory kill cannot take Slicer down, the GPU
memory is released when the run ends, and the run can be cancelled. :class:`ProcessRunner`
starts the child, reads its stdout and stderr on two daemon threads into a queue, and hands the
parsed lines out through :meth:`ProcessRunner.poll`, which never blocks: the widget calls it from
a ``QTimer``, scripts call :meth:`ProcessRunner.wait`. :meth:`ProcessRunner.cancel` kills the
whole process tree (a new session + ``os.killpg`` on POSIX, ``taskkill /T`` on Windows).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

IDLE = "idle"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

_EOF = object()

OOM_HINT = ("Try the Fast option, the CPU device, or crop the input to a region of interest (ROI); "
            "close other programs to free memory.")


def describe_exit(returncode: Optional[int], stderr_text: str = "") -> str:
    """A one-line, user-facing explanation of an abnormal exit status."""
    lowered = stderr_text.lower()
    if "out of memory" in lowered or "outofmemoryerror" in lowered or "cuda error: out of memory" in lowered:
        return "The segmentation process ran out of memory. " + OOM_HINT
    if returncode is None:
        return "The segmentation process did not finish."
    if returncode < 0:  # POSIX: killed by a signal
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if signum == getattr(signal, "SIGKILL", 9):
            return (f"The segmentation process was killed ({name}), most likely because the computer ran "
                    "out of memory. " + OOM_HINT)
        if signum == getattr(signal, "SIGSEGV", 11):
            return f"The segmentation process crashed ({name}, segmentation fault). " + OOM_HINT
        return f"The segmentation process was stopped by {name}."
    if returncode in (137, 3221225477, 3221226505, -1073741819, -1073740791) or returncode >= 0xC0000000:
        return f"The segmentation process crashed (exit status {returncode}). " + OOM_HINT
    return f"The segmentation process failed (exit status {returncode})."


def _error_line(stderr_lines: Sequence[str]) -> str:
    """The most informative stderr line: the last ``error:`` line, else the last non-empty one."""
    lines = [ln.strip() for ln in stderr_lines if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if "error:" in low or low.startswith(("error", "traceback")):
            marker = low.rfind("error:")
            return ln[marker + len("error:"):].strip() if marker >= 0 else ln
    return lines[-1] if lines else ""


class ProcessRunner:
    """One child process whose stdout carries JSON lines.

    ``poll()`` returns the events that arrived since the last call, each a dict: the child's own
    JSON objects (``{"event": "progress", ...}``, ``{"event": "done", ...}``, ``{"event": "error",
    ...}``), ``{"event": "log", "stream": "stdout"|"stderr", "message": line}`` for any other line,
    and finally ``{"event": "exit", "state": ..., "returncode": ..., "message": ...}`` once the
    process has ended and both streams are drained.
    """

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None) -> None:
        if not command:
            raise ValueError("empty command")
        self.command: List[str] = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.state = IDLE
        self.returncode: Optional[int] = None
        self.message = ""  # why it failed, one line
        self.done_event: Optional[dict] = None
        self.error_event: Optional[dict] = None
        self.last_progress: Optional[dict] = None
        self.stderr_lines: List[str] = []
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self._proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue" = queue.Queue()
        self._open_streams = 0
        self._threads: List[threading.Thread] = []
        self._cancel_requested = False
        self._exit_seen_at: Optional[float] = None

    # ------------------------------------------------------------------ properties
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def finished(self) -> bool:
        return self.state in (SUCCEEDED, FAILED, CANCELLED)

    # ------------------------------------------------------------------ control
    def start(self) -> "ProcessRunner":
        if self.state != IDLE:
            raise RuntimeError("a runner can be started only once")
        kwargs: Dict = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                            bufsize=1)
        if os.name == "nt":
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the whole tree
        try:
            self._proc = subprocess.Popen(self.command, **kwargs)
        except OSError as exc:
            self.state = FAILED
            self.message = f"Cannot start the segmentation process ({self.command[0]}): {exc.strerror or exc}"
            self._queue.put({"event": "exit", "state": FAILED, "returncode": None, "message": self.message})
            return self
        self.started_at = time.monotonic()
        self.state = RUNNING
        for stream, name in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            t = threading.Thread(target=self._reader, args=(stream, name), daemon=True,
                                 name=f"LiverTumorSeg-{name}-reader")
            self._open_streams += 1
            t.start()
            self._threads.append(t)
        return self

    def _reader(self, stream, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # stream closed under us (process killed)
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass
            self._queue.put((name, _EOF))

    def poll(self) -> List[dict]:
        """Events that arrived since the last call; never blocks."""
        events: List[dict] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, dict):  # synthetic event (failed start)
                events.append(item)
                continue
            name, line = item
            if line is _EOF:
                self._open_streams -= 1
                continue
            events.append(self._parse(name, line))
        if self.state == RUNNING and self._proc is not None:
            rc = self._proc.poll()
            if rc is not None and self._open_streams <= 0:
                events.append(self._conclude(rc))
            elif rc is not None:
                # The child exited but a grandchild may still hold the pipes open; give the readers
                # a moment, then conclude anyway so that a leaked worker cannot hang the run.
                if self._exit_seen_at is None:
                    self._exit_seen_at = time.monotonic()
                elif time.monotonic() - self._exit_seen_at > 5.0:
                    self._kill_tree(getattr(signal, "SIGKILL", None))
                    events.append(self._conclude(rc))
        return events

    def _parse(self, name: str, line: str) -> dict:
        if name == "stderr":
            self.stderr_lines.append(line)
            del self.stderr_lines[:-200]
            return {"event": "log", "stream": "stderr", "message": line}
        text = line.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                kind = obj.get("event")
                if kind is None and "phase" in obj and "fraction" in obj:
                    obj = {"event": "progress", **obj}
                    kind = "progress"
                if kind == "progress":
                    self.last_progress = obj
                elif kind == "done":
                    self.done_event = obj
                elif kind == "error":
                    self.error_event = obj
                return obj
        return {"event": "log", "stream": "stdout", "message": line}

    def _conclude(self, rc: Optional[int]) -> dict:
        self.returncode = rc
        self.ended_at = time.monotonic()
        if self._cancel_requested:
            self.state = CANCELLED
            self.message = "Cancelled by the user."
        elif rc == 0 and self.done_event is not None:
            self.state = SUCCEEDED
            self.message = ""
        else:
            self.state = FAILED
            stderr_text = "\n".join(self.stderr_lines)
            if self.error_event is not None and self.error_event.get("message"):
                self.message = str(self.error_event["message"])
                if "out of memory" in self.message.lower():
                    self.message += ". " + OOM_HINT
            elif rc == 0:
                self.message = "The segmentation process ended without reporting a result."
            else:
                generic = describe_exit(rc, stderr_text)
                line = _error_line(self.stderr_lines)
                crashed = rc is not None and (rc < 0 or rc in (137,) or rc >= 0xC0000000)
                if line and not crashed and "out of memory" not in stderr_text.lower():
                    self.message = line
                else:
                    self.message = generic
        return {"event": "exit", "state": self.state, "returncode": rc, "message": self.message}

    def cancel(self, grace_s: float = 3.0) -> None:
        """Kill the child and everything it started; the next ``poll()`` reports the exit."""
        if self.state != RUNNING or self._proc is None:
            if self.state == IDLE:
                self.state = CANCELLED
                self.message = "Cancelled by the user."
            return
        self._cancel_requested = True
        if os.name == "nt":
            self._kill_tree(None)
            return
        self._kill_tree(signal.SIGTERM)
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        # Whatever is left of the group (the child, or workers it started) goes now.
        self._kill_tree(signal.SIGKILL)
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass

    def _kill_tree(self, sig) -> None:
        proc = self._proc
        if proc is None:
            return
        if os.name == "nt":
            try:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30, check=False)
            except (OSError, subprocess.SubprocessError):
                pass
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
            return
        try:
            os.killpg(proc.pid, sig)  # the child leads its own session, so pgid == pid
        except (ProcessLookupError, PermissionError):
            if proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except OSError:
                    pass

    def wait(self, timeout: Optional[float] = None, callback: Optional[Callable[[dict], Optional[bool]]] = None,
             interval: float = 0.05) -> str:
        """Block until the process ends; ``callback(event)`` sees every event and may return True
        to cancel. Returns the final state. ``timeout`` (seconds) cancels the run when exceeded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if callback is not None and callback(event) and self.running:
                    self.cancel()
            if self.finished:
                return self.state
            if deadline is not None and time.monotonic() > deadline and self.running:
                self.cancel()
                self.message = f"Timed out after {timeout:.0f} s."
            time.sleep(interval)


def python_environment(extra_paths: Sequence[str] = (), base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment for the child: ``extra_paths`` first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ if base is None else base)
    paths = [str(p) for p in extra_paths if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def default_python_executable() -> str:
    """A Python that can run the library: ``LIVERTUMORSEG_PYTHON``, else ``PythonSlicer`` on the
    PATH (inside Slicer), else this interpreter."""
    import shutil

    override = os.environ.get("LIVERTUMORSEG_PYTHON")
    if override:
        return override
    found = shutil.which("PythonSlicer")
    if found:
        return found
    return sys.executable
