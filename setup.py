"""Only the optional compiled part: everything else is in pyproject.toml.

`zherd._speedups` (the neighbor record check, in C) is built when a C compiler and
the Python headers are there; when they are not, the build says so and goes on, and
zherd uses the pure-Python check it keeps in zherd/record.py.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("zherd._speedups", ["zherd/_speedups.c"], optional=True)])
