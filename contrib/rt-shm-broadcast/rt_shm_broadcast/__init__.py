"""rt-shm-broadcast: a pickle-free, shared-memory metadata channel for rt.

Select it with ``rt serve --plugins=shm-broadcast``. Importing this package
imports nothing else; the plugin module is ``rt_shm_broadcast.plugin``.
"""
