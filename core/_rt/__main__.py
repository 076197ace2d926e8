"""``python -m rt`` is the ``rt`` command."""

from __future__ import annotations

import sys

from rt.core.cli import main

if __name__ == "__main__":
    sys.exit(main())
