"""Attribution methods, registered by name (``registry.py``). Each returns the shared long table (``tables.py``).

Add a method: write a module with a function ``fn(subject, tprobes, **options) -> DataFrame`` decorated with
``@register("name", level="token" | "component")``, and import the module below.
"""

from __future__ import annotations

from unpact_mech.attribution import dla, gradient, loo  # noqa: F401  (registers methods)
from unpact_mech.attribution.registry import ATTRIBUTION_METHODS, attribute, method_info, register

__all__ = ["ATTRIBUTION_METHODS", "attribute", "method_info", "register"]
