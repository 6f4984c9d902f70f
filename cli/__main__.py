"""`python -m cli up` is `nurture up` without the installed console script (tests and benchmarks use it)."""

from cli.main import main

raise SystemExit(main())
