"""Pli: a self-hostable secure health messaging service."""

__version__ = "0.1.0"
