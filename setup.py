"""The shim the project layout keeps: every piece of packaging metadata is in pyproject.toml."""

from setuptools import setup

setup()
