#!/usr/bin/env python3
"""Regenerate nvmmpy's pre-parsed cffi modules after a CDEF changed (see nvmmpy/ffi_build.py)."""
from nvmmpy.ffi_build import main

main()
