"""Thin tasks: decode ids, call domain code in ``app``, turn the answer into a broker action."""
