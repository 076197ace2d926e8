"""rt-plugin-template: a third-party rt plugin to copy.

``plugin`` holds the hook implementations (entry point ``template`` in the
``rt.plugins`` group); ``stage`` declares the ``template-check`` startup stage and
the hook it calls (entry point in the ``rt.stages`` group). Importing this
package loads nothing and registers nothing: rt imports ``plugin`` only when the
plugin is selected.
"""

from __future__ import annotations

__version__ = "0.1.0"
