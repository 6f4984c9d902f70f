"""The command line: `nurture up` (the whole mesh on one machine) and `nurture simulate`.

A top-level package beside `gateway/`, not part of the platform package `nurture/`: these tools start
and import the services, and the platform knows no service (tests/unit/platform/test_import_boundary.py).
"""
