"""Built-in plugin ``zygote``: a resident process that has imported torch and the engine,
and the commands and rank processes forked from it (see docs/startup.md).

- ``plugin.py``: the plugin (entry point ``zygote``): ``rt zygote``, and at CLI entry
  the zygote stands in for multiprocessing's forkserver, so ranks fork from it.
- ``launch.py``: the launcher (entry point group ``rt.launchers``): ``rt serve`` and
  ``rt generate`` hand the whole command to the zygote, which forks their driver.
- ``server.py``: the zygote itself; ``child.py`` and ``driver.py``: what it forks.

This package's ``__init__`` imports nothing: the launcher runs before anything else in
every ``rt`` command, and importing a submodule imports its package first.
"""
