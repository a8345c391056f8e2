"""`python -m idlakd` runs the command line."""

from idlakd.cli import main

raise SystemExit(main())
