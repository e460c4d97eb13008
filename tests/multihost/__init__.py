"""A herd across hosts: five Linux network namespaces, one veth pair per link (root only)."""
