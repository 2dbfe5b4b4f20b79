"""Probes of the node's health and the verdict keepalived sees."""
