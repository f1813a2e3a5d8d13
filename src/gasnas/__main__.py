"""`python -m gasnas` (what torchrun launches)."""

from gasnas.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
