"""The cluster in a box: a whole mailcow-ha cluster in network namespaces on one machine.

Everything is real (keepalived, MariaDB Galera, podman, loop devices, the runtime) except the
Hetzner Cloud API, which is the fake from `harness.fakecloud`. The fake's state drives the lab:
its volume attachments make block devices appear and vanish on nodes, and its floating IP
assignment steers the lab's router. Nothing but each node's config tells the runtime it is a lab.
"""
