"""Keyed hashes and signatures derived from the server secret, shared by serving, events and
learning: pseudonymous user keys (`identity`) and signed tracking tokens (`tokens`)."""
