"""Explanation methods, one module per method, registered by name.

Importing this package registers every method the server provides.
"""

from xaiserve.methods.base import (
    Explanation,
    MethodSpec,
    Target,
    get_method,
    register_method,
    registered_methods,
)

__all__ = [
    "Explanation",
    "MethodSpec",
    "Target",
    "get_method",
    "register_method",
    "registered_methods",
]
