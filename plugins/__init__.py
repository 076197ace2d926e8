"""rt.plugins: rt's built-in plugins.

Each is registered in rt's ``pyproject.toml`` under the ``rt.plugins`` entry-point
group, exactly as a third-party plugin would be, and none imports another: they
meet through records and protocols in ``rt.core``.
"""
