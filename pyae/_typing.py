"""Type aliases shared by pyae's modules."""

from __future__ import annotations

import os
from typing import Union

__all__ = ["PathLike"]

PathLike = Union[str, "os.PathLike[str]"]
