"""``tme viz``: check what to show, then serve the Solara page on a local port until Ctrl-C.

The target (a config to simulate, or a run file to replay) is checked here, before any server starts, so a
missing or invalid file is reported like every other ``tme`` user error. The page itself
(:mod:`abm.adapters.viz.app`) reads the target from environment variables that :func:`serve` sets, and the
Solara server runs in this process under uvicorn.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
import webbrowser
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RUN_SUFFIXES", "VizTarget", "check_target", "serve", "target_from_env"]

#: File suffixes read as run files (replayed); anything else is read as a TOML config (simulated).
RUN_SUFFIXES = (".h5", ".hdf5")

_ENV_PATH, _ENV_KIND, _ENV_OVERRIDES = "TME_VIZ_TARGET", "TME_VIZ_KIND", "TME_VIZ_OVERRIDES"
_APP = "abm.adapters.viz.app"
_SHUTDOWN_S = 3  # seconds open connections get to close on Ctrl-C


@dataclass(frozen=True)
class VizTarget:
    """What the page shows: ``kind`` ``"config"`` (simulated live, with ``overrides``) or ``"run"`` (replayed)."""

    path: Path
    kind: str
    overrides: tuple[str, ...] = ()

    def to_env(self) -> dict[str, str]:
        """The environment variables :func:`target_from_env` reads."""
        return {_ENV_PATH: str(self.path), _ENV_KIND: self.kind, _ENV_OVERRIDES: json.dumps(list(self.overrides))}


def target_from_env(environ=None) -> VizTarget:
    """The target :func:`serve` handed to the page."""
    environ = os.environ if environ is None else environ
    if _ENV_PATH not in environ:
        raise RuntimeError(f"{_ENV_PATH} is not set: start the page with `tme viz CONFIG|RUN.h5`")
    return VizTarget(Path(environ[_ENV_PATH]), environ.get(_ENV_KIND, "config"),
                     tuple(json.loads(environ.get(_ENV_OVERRIDES, "[]"))))


def check_target(path, overrides=()) -> VizTarget:
    """Check a config or run file before serving it.

    Parameters
    ----------
    path : path-like
        TOML config, run file (``.h5``), or a run directory holding ``sim.h5``.
    overrides : sequence of str
        ``KEY=VALUE`` config overrides (TOML values), as ``tme run --set``; configs only.

    Returns
    -------
    VizTarget

    Raises
    ------
    abm.config.ConfigError
        If the config is missing, not TOML or invalid with the overrides.
    abm.io.RunFileError
        If the run file is missing, unreadable or holds no snapshot.
    ValueError
        If overrides are given for a run file.
    """
    from abm.config import load_config
    from abm.io.reader import RunFileError
    from abm.io.run import open_run

    path = Path(path)
    if path.is_dir() and (path / "sim.h5").is_file():
        path = path / "sim.h5"
    if path.suffix.lower() in RUN_SUFFIXES:
        if overrides:
            raise ValueError(f"{path}: --set changes a config; a run file is replayed as it was written")
        with open_run(path) as run:
            if not len(run):
                raise RunFileError(f"{path}: holds no snapshot to show")
        return VizTarget(path.resolve(), "run")
    load_config(path, list(overrides))
    return VizTarget(path.resolve(), "config", tuple(overrides))


def check_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host`` (0: a free port chosen now), else ``ValueError``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                             "choose another port (0 picks a free one)") from None
        return sock.getsockname()[1]


def _logging_config() -> dict:
    """Server logs: warnings and errors only, one line each, on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "tme viz: %(levelname)s: %(message)s"}},
        "handlers": {"stderr": handler},
        "loggers": {name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "solara")} | {
            "uvicorn.access": {"handlers": [], "level": "ERROR", "propagate": False}},
    }


def serve(target: VizTarget, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True,
          ready=None) -> None:
    """Serve the page for ``target`` on ``http://host:port`` until Ctrl-C (or SIGTERM).

    Parameters
    ----------
    target : VizTarget
        From :func:`check_target`.
    host, port : str, int
        Where to listen (``port`` already checked by :func:`check_port`).
    open_browser : bool
        Open the page in the default browser once the server accepts connections.
    ready : callable, optional
        Called with the URL once the server accepts connections.
    """
    os.environ.update(target.to_env())
    os.environ.update({"SOLARA_APP": _APP, "SERVER_NAME": host, "SERVER_PORT": str(port)})
    os.environ.setdefault("SOLARA_TELEMETRY_MIXPANEL_ENABLE", "false")  # no usage reports from a local tool
    os.environ.setdefault("SOLARA_MODE", "production")  # no hot reload, no development banners
    import uvicorn

    # Solara warns that a session cookie cannot be samesite=none over http, then uses lax: right for localhost.
    warnings.filterwarnings("ignore", message="Cookies with samesite=none require https")

    server = uvicorn.Server(uvicorn.Config("solara.server.starlette:app", host=host, port=port,
                                           log_config=_logging_config(), timeout_graceful_shutdown=_SHUTDOWN_S))
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def announce():
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            if ready is not None:
                ready(url)
            if open_browser:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled once the server has shut down
        pass
