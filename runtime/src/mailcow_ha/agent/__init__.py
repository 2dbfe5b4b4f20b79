"""The resident node agent: keepalived transitions in, health verdicts out, the status API."""
