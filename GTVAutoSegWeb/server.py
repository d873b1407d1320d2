"""``gtvautoseg serve``: the host policy, offscreen rendering and the trame server.

The app shows patient images and has no authentication, so it listens on the loopback interface
unless the user asks for another one explicitly (``--allow-remote``), and then says so loudly.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

from GTVAutoSegLib.errors import GTVError

from .environment import ensure_module_logic, use_offscreen_gl

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
NO_AUTH_WARNING = ("gtvautoseg serve: WARNING: listening on {host}, not only on this computer; the app has no "
                   "authentication: anyone who can reach {host}:{port} sees and changes the patient images "
                   "loaded in it. Use a private network, an SSH tunnel or a reverse proxy with authentication.")


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this computer can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, port: int, allow_remote: bool) -> str | None:
    """The warning to print for ``host``, or None for a loopback address.

    Raises:
        GTVError: another interface without ``--allow-remote``.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise GTVError(f"refusing to listen on {host}: the app has no authentication and would show patient images "
                       "to anyone on that network; add --allow-remote to do it anyway, or use 127.0.0.1")
    return NO_AUTH_WARNING.format(host=host, port=port)


def serve(host: str = "127.0.0.1", port: int = 8080, data: str | None = None, output: str | None = None,
          allow_remote: bool = False, max_upload_mb: float = 1024.0) -> int:
    """Start the web app and block until the server stops (Ctrl+C)."""
    warning = check_host(host, port, allow_remote)
    if not max_upload_mb > 0:
        raise GTVError(f"--max-upload-mb must be positive, not {max_upload_mb}")
    if port < 0 or port > 65535:
        raise GTVError(f"--port {port} is not a TCP port")
    if data is not None and not Path(data).is_dir():
        raise GTVError(f"--data {data}: not a folder")
    use_offscreen_gl()
    ensure_module_logic()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from trame.app import get_server

    from .app import WebApp

    server = get_server("gtvautoseg", client_type="vue3")
    # trame reads its own flags from sys.argv unless TRAME_ARGS is set; ours were parsed already.
    os.environ["TRAME_ARGS"] = ""
    server.enable_module({"serve": {"gtvautoseg_static": str(STATIC)}, "scripts": ["gtvautoseg_static/upload.js"]})
    WebApp(server, dataFolder=Path(data) if data else None, outputFolder=Path(output) if output else None,
           maxUploadMb=max_upload_mb)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    server.controller.on_server_ready.add(
        lambda **_: print(f"GTVAutoSeg web app on http://{host}:{server.port}/ (Ctrl+C stops it)", flush=True))
    server.start(host=host, port=port, open_browser=False, timeout=0, show_connection_info=False,
                 disable_logging=True)
    return 0
