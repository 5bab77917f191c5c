"""`python -m duat ...` runs the command line (see duat.cli)."""
from duat.cli import main

raise SystemExit(main())
