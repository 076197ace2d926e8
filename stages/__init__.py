"""rt.stages: one module per built-in startup stage, each declaring a ``STAGE`` record.

They are registered in rt's ``pyproject.toml`` under the ``rt.stages`` entry-point
group, exactly as a third-party stage would be.
"""
