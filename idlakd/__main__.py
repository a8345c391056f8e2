"""`python -m idlakd` runs the command line."""

from idlakd.cli.main import main

raise SystemExit(main())
