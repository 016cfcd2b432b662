"""Small utilities shared by the entry points and scripts."""
