"""`python -m idlakd.worker`: one synthesis worker process (see idlakd.worker.main)."""

import sys

from idlakd.worker.main import main

sys.exit(main())
