"""mechlearn: the helper library of a course in mechanistic interpretability.

Each module is the reference answer to one part of the course; its docstring names
the chapter that teaches it.
"""

from mechlearn.device import device, generator_for, seed_everything, use_deterministic_algorithms

__version__ = "0.1.0"
__all__ = ["device", "generator_for", "seed_everything", "use_deterministic_algorithms", "__version__"]
