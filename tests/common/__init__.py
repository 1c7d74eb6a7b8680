"""Helpers shared by test modules of more than one file: test modules import from here (or from a
conftest), never from another test module."""
