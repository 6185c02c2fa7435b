"""`python -m modelflock` is the `modelflock` command."""

from modelflock.cli import main

raise SystemExit(main())
