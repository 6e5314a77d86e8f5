"""The ``kops`` root command.

Subcommand groups live one per module; to add one, append ``(module, attribute)`` to
:data:`COMMANDS`. A module is imported only when its command runs (or for the root
``--help``): the broker's modules alone cost half a second, which every `kops produce`
would otherwise pay.
"""

from __future__ import annotations

import importlib

import click

from kops.cli.common import KopsGroup

#: (module, attribute) of every command registered on the root group, in help order.
COMMANDS: list[tuple[str, str]] = [
    ("kops.cli.up", "up"),
    ("kops.cli.broker", "broker"),
    ("kops.cli.cluster", "cluster"),
    ("kops.cli.topic", "topic"),
    ("kops.cli.produce", "produce"),
    ("kops.cli.consume", "consume"),
    ("kops.cli.group", "group"),
    ("kops.cli.txn", "txn"),
    ("kops.cli.rewind", "rewind"),
    ("kops.cli.replay", "replay"),
    ("kops.cli.lag", "lag"),
    ("kops.cli.bench", "bench"),
    ("kops.cli.delay", "delay"),
    ("kops.cli.worker", "worker"),
    ("kops.cli.dlq", "dlq"),
    ("kops.cli.backlog", "backlog"),
    ("kops.cli.doctor", "doctor"),
    ("kops.cli.top", "top"),
]


class _LazyRoot(KopsGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [attr for _, attr in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module_name, attr in COMMANDS:
            if attr == cmd_name:
                command: click.Command = getattr(importlib.import_module(module_name), attr)
                return command
        return None


@click.group(cls=_LazyRoot, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kops", prog_name="kops")
def main() -> None:
    """kops: an operator's toolkit for Kafka.

    Every command takes --bootstrap (env KOPS_BOOTSTRAP, default 127.0.0.1:9092) and
    -X key=value for extra client properties (TLS, SASL...). Errors print one line starting
    with "error:" on stderr and exit with status 1; set KOPS_DEBUG=1 for a full traceback.
    """
