"""bcct: weakly supervised object localization with a Background Image Set (BC-CT)."""
__version__ = "0.1.0"
