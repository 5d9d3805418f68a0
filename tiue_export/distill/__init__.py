"""``tiue-export distill``: loop-free VSD + KL distillation of a teacher into a TiUE student.

``config`` holds the recipe, ``losses`` the loss terms as pure functions, ``data`` the prompts,
``train`` the loop. Import ``tiue_export.distill.train`` for :func:`distill` (it needs torch).
"""

from .config import DistillConfig

__all__ = ["DistillConfig"]
