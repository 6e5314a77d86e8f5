"""``--metrics HOST:PORT`` for the long-running worker commands (``kops worker run``,
``kops delay worker``): serve prometheus-client's default registry, which holds every
recipe's metrics (:mod:`kops.recipes.metrics`), over HTTP at ``/metrics``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
from prometheus_client import REGISTRY, start_http_server

__all__ = ["METRICS_ADDRESS", "metrics_option", "serve_metrics"]

F = TypeVar("F", bound=Callable[..., Any])


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT (port 0 picks a free one), got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _AddressType(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return _address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: The click type of a ``--metrics`` value: ``(host, port)``.
METRICS_ADDRESS = _AddressType()


def metrics_option(f: F) -> F:
    """``--metrics HOST:PORT`` (env ``KOPS_METRICS``); the command gets ``metrics``, a
    ``(host, port)`` or None."""
    return click.option(
        "--metrics",
        type=METRICS_ADDRESS,
        default=None,
        envvar="KOPS_METRICS",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free one); "
        "with it the worker also exports consumer lag (kafka_consumergroup_group_lag*).",
    )(f)


@contextlib.contextmanager
def serve_metrics(
    address: tuple[str, int] | None, announce: Callable[[str], None] = click.echo
) -> Iterator[str | None]:
    """Serve the default registry on ``address`` while the block runs; yields the URL (with
    the port actually bound) after ``announce("metrics on URL")``, or None without an
    address. A port in use is a one-line error."""
    if address is None:
        yield None
        return
    host, port = address
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/metrics"
    try:
        announce(f"metrics on {url}")
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
