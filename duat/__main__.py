"""`python -m duat ...` runs the command line (see duat.cli); importing it does nothing."""
from duat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
