"""The recipe ``kops up`` runs when it finds no recipe files (an installed kops, no checkout):
the default delay tiers, same as the repository's ``recipes/delay-tiers.toml``."""

DEFAULT_RECIPE = """
description = "Built-in: tiered delay topics with forwarders and a status report"

[[job]]
name = "delay-forwarders"
kind = "delay-forwarders"

[[job]]
name = "delay-status"
kind = "delay-status"
every = "1m"
"""
