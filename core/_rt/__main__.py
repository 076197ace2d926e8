"""``python -m rt`` is the ``rt`` command."""

from __future__ import annotations

from rt.core.launch import console_main

if __name__ == "__main__":
    console_main()
