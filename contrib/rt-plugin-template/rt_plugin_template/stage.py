"""The ``template-check`` stage and the hook it calls, ``rt_template_check``.

A stage that brings its own hook declares it in a spec class and passes the class
as ``Stage(specs=...)``; rt adds the spec to every plugin manager whose selection
contains this stage, before any plugin registers.
"""

from __future__ import annotations

from typing import Any

from rt.core import Stage, hookspec


class TemplateSpecs:
    """Hookspecs of this distribution. pluggy wants ``self`` first on spec methods."""

    @hookspec(firstresult=True)
    def rt_template_check(self, config: Any, runtime: Any) -> Any:
        """Check the environment the preload stage recorded; return a report (``firstresult``).

        Called once, in the driver, after ``preload``. Return a
        :class:`rt_plugin_template.plugin.TemplateReport`, or raise
        ``SkipStage(reason)`` when there is nothing to check.

        Example::

            @hookimpl
            def rt_template_check(config, runtime):
                return TemplateReport(facts=None, warnings=("checked elsewhere",))
        """


STAGE = Stage(
    name="template-check",
    hook="rt_template_check",
    needs=("preload",),
    where="driver",
    specs=TemplateSpecs,
    description="template: check the environment facts recorded at preload",
)
