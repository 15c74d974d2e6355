"""The one base of every error latentcube raises on purpose.

Each module keeps its own error class (``CubeError``, ``EmbedError``, ...), derived from
:class:`LatentcubeError` and, for backward compatibility, from the builtin it always was
(``ValueError`` or ``RuntimeError``). The CLI catches ``LatentcubeError`` and prints its message, which
follows the "problem. Fix: ..." form, without a traceback.
"""

from __future__ import annotations

__all__ = ["LatentcubeError"]


class LatentcubeError(Exception):
    """A problem with the user's input, files or settings, with its fix in the message."""
