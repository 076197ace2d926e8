"""What the forkserver imports before it forks any rank: its one preload module.

multiprocessing's forkserver preloads by importing module names; this module's import
imports the ranks' modules (``FORKSERVER_MODULES``) with the garbage collector paused
(``paused_gc.py``), which a plain list of names would not. The forkserver ignores an
``ImportError`` in a preload module, so a rank then imports what is missing itself.
"""

from __future__ import annotations

from rt.plugins.tp.paused_gc import import_modules
from rt.plugins.tp.preload import FORKSERVER_MODULES

import_modules(FORKSERVER_MODULES)
