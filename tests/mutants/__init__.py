"""Deliberately broken nodes, run by the checker's mutation test (never by anything else)."""
