"""The `sluice` command: `proxy`, `operator`, `crds`, `version`.

Bad input ends with exit code 2 and one line on stderr naming what is wrong, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
from importlib import metadata
from typing import Any

from sluice import api
from sluice.api import config as config_

DNS_LABEL = re.compile(api.base.DNS_LABEL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except api.ConfigError as e:
        print(f"sluice: {e}", file=sys.stderr)
        return 2
    return result


LOG_LEVELS = ["debug", "info", "warning", "error"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_proxy(commands.add_parser("proxy", help="run the caching, batching proxy"))
    add_operator(commands.add_parser("operator", help="run the Kubernetes operator"))
    add_crds(commands.add_parser("crds", help="print the CustomResourceDefinitions as YAML"))
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=run_version)
    return parser


def add_proxy(proxy: argparse.ArgumentParser) -> None:
    proxy.add_argument("--config", type=pathlib.Path, help="YAML config file (see README)")
    proxy.add_argument("--upstream", help="OpenAI-compatible base URL; overrides llm.upstream.url")
    proxy.add_argument("--host", help="address to bind; overrides listen.host")
    proxy.add_argument("--port", type=int, help="port to serve on; overrides listen.port (8080)")
    proxy.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    proxy.add_argument(
        "--log-format",
        default=os.environ.get("SLUICE_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text, or one JSON object a line (default: $SLUICE_LOG_FORMAT, else text)",
    )
    proxy.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log a line for every request answered (default: on)",
    )
    proxy.set_defaults(run=run_proxy)


def add_operator(operator: argparse.ArgumentParser) -> None:
    operator.add_argument(
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        metavar="NAME",
        help="watch only this namespace (repeat for more); default: cluster-wide",
    )
    operator.add_argument("--proxy-image", help="image of the proxies (default: this version's)")
    operator.add_argument("--health-port", type=int, default=8080, help="liveness /healthz port")
    operator.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port")
    operator.add_argument(
        "--scrape-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often the proxies' /metrics are read into the policies' status (default 60)",
    )
    operator.add_argument(
        "--secret-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often referenced Secrets are re-read, to roll the pods on rotation (default 30)",
    )
    operator.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    operator.set_defaults(run=run_operator)


def add_crds(crds: argparse.ArgumentParser) -> None:
    crds.add_argument(
        "--write",
        type=pathlib.Path,
        action="append",
        metavar="DIR",
        help="write one file per CRD into DIR (repeat for the chart's copy)",
    )
    crds.set_defaults(run=run_crds)


def proxy_config(args: argparse.Namespace) -> api.ProxyConfig:
    """The config file (or the built-in defaults) with the command-line overrides applied."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if args.config is not None:
        source = str(args.config)
        raw = config_.read(args.config)
    if args.upstream is not None:
        upstream = raw.setdefault("llm", {}).setdefault("upstream", {})
        upstream["url"] = args.upstream
        upstream.pop("endpoints", None)
    if args.config is None and "mcp" not in raw:
        raw.setdefault("llm", {})
    listen = raw.setdefault("listen", {}) if (args.host or args.port) else {}
    if args.host is not None:
        listen["host"] = args.host
    if args.port is not None:
        listen["port"] = args.port
    return config_.parse(raw, source=source)


def run_proxy(args: argparse.Namespace) -> int:
    config = proxy_config(args)
    from sluice import proxy  # imported late: `sluice crds` should not pay for uvicorn/aiohttp

    if args.log_format not in ("text", "json"):  # from $SLUICE_LOG_FORMAT: argparse checks flags
        raise api.ConfigError(f"--log-format {args.log_format!r}: must be text or json")
    proxy.serve(
        config, log_level=args.log_level, log_format=args.log_format, access_log=args.access_log
    )
    return 0


def run_operator(args: argparse.Namespace) -> int:
    # Imported late, like the proxy: `sluice crds` should not pay for kopf.
    from sluice.operator import options, runner

    for namespace in args.namespaces:
        if not DNS_LABEL.fullmatch(namespace):
            raise api.ConfigError(f"--namespace {namespace!r}: not a namespace name")
    for flag, value in (("--scrape-interval", args.scrape_interval),
                        ("--secret-interval", args.secret_interval)):  # fmt: skip
        if not value > 0:  # also refuses NaN
            raise api.ConfigError(f"{flag} {value}: must be above 0")
    chosen = options.Options(
        namespaces=tuple(args.namespaces),
        proxy_image=args.proxy_image or options.default_image(),
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
        scrape_interval_seconds=args.scrape_interval,
        secret_interval_seconds=args.secret_interval,
    )
    runner.run(chosen)
    return 0


def run_crds(args: argparse.Namespace) -> int:
    from sluice.api import crds

    if not args.write:
        print("---\n".join(crds.rendered().values()), end="")
        return 0
    for directory in args.write:
        try:
            paths = crds.write(directory)
        except OSError as e:
            raise api.ConfigError(f"{directory}: cannot write: {e.strerror}") from None
        for path in paths:
            print(path)
    return 0


def run_version(args: argparse.Namespace) -> int:
    print(metadata.version("sluice-operator"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
