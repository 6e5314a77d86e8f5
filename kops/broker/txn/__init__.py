"""Transactions (KIP-98): the coordinator, its rules and its state topic."""
