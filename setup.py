"""The one compiled part: ReAlign's fused CPU row kernels (kernels/csrc/native.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the build
goes on and the kernels take their torch path (kernels/native.py says which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "revision.kernels._native",
            sources=["kernels/csrc/native.c"],
            # Contraction off: every instruction-set clone rounds the same way (see native.c).
            # No strict aliasing: native.c puns types through memcpy only (tests/test_native_sanitize.py
            # checks), this guards what a later edit might add; the same loops vectorise either way.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-fno-math-errno", "-Wall"],
            optional=True,
        )
    ]
)
