"""Real hosts on one machine (issue 7): hsbcpd, host A, host B and the terminals in
separate network namespaces, joined through bridges by veth pairs, with links that
can be cut and healed one at a time. See `harness.py`."""
