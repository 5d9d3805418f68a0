"""The built-in toy domain (procedural shapes with exact captions) and its small teacher model.

``domain`` is numpy + Pillow only; ``teacher`` (torch, diffusers) is imported only when training.
"""
