"""Only the optional compiled parts: everything else is in pyproject.toml.

`zherd._speedups` (the neighbor record check and the store's put) and
`gateway._speedups` (the IAMAT parse) are built when a C compiler and the Python
headers are there; when they are not, the build says so and goes on, and zherd uses
the pure-Python functions it keeps beside them (zherd/record.py, zherd/locations.py,
gateway/protocol.py), which give the same answers.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            f"{package}._speedups",
            [f"{package}/_speedups.c"],
            include_dirs=["csrc"],  # the grammar both share (csrc/grammar.h)
            depends=["csrc/grammar.h"],
            libraries=[] if sys.platform == "win32" else ["m"],
            optional=True,
        )
        for package in ("zherd", "gateway")
    ]
)
