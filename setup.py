"""Builds the optional native core ``udpnest._native`` (csrc/).  Metadata lives in pyproject.toml.

The extension is optional, as in msgpack-python: with no compiler (or ``UDPNEST_PUREPYTHON=1``) the
install still succeeds and udpnest runs its pure-Python engine, saying so loudly at install and at start.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BANNER = "=" * 78


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure means: no native engine
            self._warn(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._warn(e)

    @staticmethod
    def _warn(e):
        print(f"\n{BANNER}\nWARNING: udpnest's native core (udpnest._native) was NOT built: {e}\n"
              "udpnest will run the pure-Python engine (much slower). Install a C compiler and the\n"
              "Python headers (scripts/install-deps.sh: gcc, python3-dev) and reinstall.\n"
              f"{BANNER}\n", file=sys.stderr)


ext_modules = []
if not os.environ.get("UDPNEST_PUREPYTHON"):
    ext_modules.append(Extension(
        "udpnest._native",
        sources=["csrc/module.c", "csrc/tx.c", "csrc/rx.c", "csrc/txburst.c", "csrc/rxbatch.c"],
        depends=["csrc/udpnest.h"],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers", "-fno-strict-aliasing"],
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
