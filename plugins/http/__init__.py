"""Built-in plugin ``http``: the OpenAI-compatible HTTP frontend of ``rt serve``.

``hooks.py`` is the plugin module (what the entry point names); everything heavy
(Starlette, Hypercorn, prometheus_client) is imported only when the ``frontend``
stage runs.
"""
