"""setuptools shim: the only thing pyproject.toml cannot say is cffi_modules."""

from setuptools import setup

setup(cffi_modules=["guestagent/xen/_build.py:ffibuilder"])
