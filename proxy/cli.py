"""The `channels-proxy` command (also `python -m proxy`).

Where the config comes from, in order:
1. `--config PATH`: that file; a missing file is an error.
2. otherwise `config/proxy.yaml` relative to the working directory, if it exists;
3. otherwise the built-in default (`DEFAULT_CONFIG`, the same as the shipped
   `config/proxy.yaml`: an embedded jupyter_server behind `/`), announced in a log line.
`--upstream URL` replaces the routes of whichever config was chosen by one route `/` -> URL,
so it works with no file at all. `--host`, `--port`, `--admin-port`, `--log-level` and
`--log-format` override single settings.

User errors print one line, `channels-proxy: error: <file>: <key>: <problem>`, and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import ConfigError, ProxyConfig, config_from_dict, load_config, single_upstream_config
from .logs import FORMATS, LEVELS, setup_logging

if TYPE_CHECKING:
    from .app import ProxyServer

PROG = "channels-proxy"
DEFAULT_CONFIG_PATH = os.path.join("config", "proxy.yaml")
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

BUILTIN_SOURCE = "<built-in default>"
DEFAULT_CONFIG: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 8890},
    "admin": {"host": "127.0.0.1", "port": 8891},
    "routes": [
        {"prefix": "/", "upstream": "embedded", "legacy": {"enabled": True, "msg_spec": "auto"}}
    ],
}

log = logging.getLogger("proxy.cli")


class UsageError(Exception):
    """A problem with the command line or the environment that is not in the config file."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (kept separate so docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reverse proxy that lets IPython 1.x/2.x frontends (shell/iopub/stdin "
        "websockets, msg spec v4) talk to a modern Jupyter server, and passes everything "
        "else through.",
        epilog=f"Without --config, {DEFAULT_CONFIG_PATH} is used when it exists, else a "
        "built-in default that starts a local jupyter_server (upstream: embedded).",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"YAML config file (default: {DEFAULT_CONFIG_PATH} if present)",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="proxy everything to this server: replaces the config's routes by '/' -> URL",
    )
    parser.add_argument("--host", help="address to listen on (overrides listen.host)")
    parser.add_argument("--port", type=_port, help="port to listen on (overrides listen.port)")
    parser.add_argument(
        "--admin-port", type=_port, help="admin listener port (overrides admin.port)"
    )
    parser.add_argument(
        "--log-level", choices=LEVELS, type=str.lower, help="overrides logging.level"
    )
    parser.add_argument("--log-format", choices=FORMATS, help="overrides logging.format")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, print a summary or what is wrong, and exit",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def resolve_config(args: argparse.Namespace) -> tuple[ProxyConfig, str | None, str]:
    """Pick and load the config: (config, path to reload on SIGHUP or None, source name)."""
    path: str | None
    if args.config is not None:
        path = args.config
    elif os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    else:
        path = None
    if path is not None:
        config, source = load_config(path), path
    else:
        # With --upstream only the built-in routes are replaced; listen/admin stay the defaults.
        source = "--upstream" if args.upstream is not None else BUILTIN_SOURCE
        config = config_from_dict(DEFAULT_CONFIG, source)
    config = apply_overrides(config, args)
    if args.upstream is not None:
        # The routes came from the command line: a reload from the file would drop them.
        path = None
    return config, path, source


def apply_overrides(config: ProxyConfig, args: argparse.Namespace) -> ProxyConfig:
    """Apply the command line's single-setting overrides to a validated config."""
    if args.upstream is not None:
        try:
            routes = single_upstream_config(args.upstream).routes
        except ConfigError as exc:
            raise ConfigError("--upstream", "", exc.problem) from None
        config = config.model_copy(update={"routes": routes})
    listen: dict[str, Any] = {}
    if args.host is not None:
        listen["host"] = args.host
    if args.port is not None:
        listen["port"] = args.port
    if listen:
        config = config.model_copy(update={"listen": config.listen.model_copy(update=listen)})
    if args.admin_port is not None:
        admin = config.admin.model_copy(update={"port": args.admin_port, "enabled": True})
        config = config.model_copy(update={"admin": admin})
    logging_update: dict[str, Any] = {}
    if args.log_level is not None:
        logging_update["level"] = args.log_level
    if args.log_format is not None:
        logging_update["format"] = args.log_format
    if logging_update:
        config = config.model_copy(
            update={"logging": config.logging.model_copy(update=logging_update)}
        )
    return config


def config_summary(config: ProxyConfig, source: str) -> str:
    """One line describing a valid config, printed by --check."""
    routes = ", ".join(f"{r.prefix} -> {r.upstream}" for r in config.routes)
    listen = f"{config.listen.host}:{config.listen.port}"
    admin = f"{config.admin.host}:{config.admin.port}" if config.admin.enabled else "off"
    return (
        f"{source}: OK: listen {listen}, admin {admin}, "
        f"{len(config.routes)} route{'s' if len(config.routes) != 1 else ''}: {routes}"
    )


def _browser_host(public_url: str) -> str:
    host = urlsplit(public_url).hostname or "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return socket.gethostname()
    except ValueError:
        pass
    return f"[{host}]" if ":" in host else host


def startup_banner(server: ProxyServer) -> str:
    """The line a user needs after start: where to open the embedded server, token included."""
    parts = urlsplit(server.public_url)
    base = f"{parts.scheme}://{_browser_host(server.public_url)}:{parts.port}"
    if not server.embedded:
        return f"proxying on {base}/"
    opened = [
        f"{base}{prefix}?token={embedded.token}" for prefix, embedded in server.embedded.items()
    ]
    return "open " + " or ".join(opened) + " (embedded jupyter_server through the proxy)"


def _server_class() -> type[ProxyServer]:
    from .app import ProxyServer

    class AnnouncingProxyServer(ProxyServer):
        """Logs the startup banner as soon as the listeners are up."""

        async def start(self) -> None:
            try:
                await super().start()
            except BaseException:
                # A listener that cannot bind must not leave the embedded server (or open
                # client connections) behind; the original error is what the user sees.
                with contextlib.suppress(Exception):
                    await self.shutdown()
                raise
            log.info("%s", startup_banner(self))

    return AnnouncingProxyServer


def _listener_error(exc: OSError, config: ProxyConfig, source: str) -> ConfigError | None:
    """Turn a failed bind into a ConfigError that names the setting to change."""
    reasons = {
        errno.EADDRINUSE: "is already in use",
        errno.EADDRNOTAVAIL: "is not an address of this machine",
        errno.EACCES: "needs more privileges to bind",
    }
    reason = reasons.get(exc.errno or 0)
    if reason is None:
        return None
    text = str(exc)
    listeners = [("listen", config.listen.host, config.listen.port)]
    if config.admin.enabled:
        listeners.append(("admin", config.admin.host, config.admin.port))
    for key, host, port in listeners:
        if f", {port})" in text or f":{port}" in text:
            return ConfigError(source, f"{key}.port", f"{host}:{port} {reason}")
    return ConfigError(source, "listen", f"cannot bind: {exc.strerror or exc}")


def _embedded_key(config: ProxyConfig) -> str:
    for index, route in enumerate(config.routes):
        if route.upstream == "embedded":
            return f"routes[{index}].upstream"
    return "routes"


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the proxy (or --check the config); returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config, config_path, source = resolve_config(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.check:
        print(config_summary(config, source))
        return EXIT_OK

    setup_logging(config.logging.level, config.logging.format)
    if source == BUILTIN_SOURCE:
        log.info(
            "%s not found and no --config given: using the built-in default "
            "(an embedded jupyter_server behind /)",
            DEFAULT_CONFIG_PATH,
        )
    else:
        log.info("configuration from %s", source)

    from .embedded import EmbeddedServerError

    server_class = _server_class()
    try:
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(server_class(config, config_path).run())
    except ConfigError as exc:
        return _fail(str(exc))
    except EmbeddedServerError as exc:
        return _fail(f"{source}: {_embedded_key(config)}: {exc}")
    except OSError as exc:
        error = _listener_error(exc, config, source)
        if error is None:
            raise
        return _fail(str(error))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
