"""bcct: weakly supervised object localization with a Background Image Set (BC-CT)."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``bcct.load`` (and ``Localizer``, ``Prediction``) from :mod:`bcct.api`, imported on first
    use so that ``import bcct`` stays light (no torch until it is needed)."""
    if name in ("load", "Localizer", "Prediction"):
        from bcct import api

        return getattr(api, name)
    raise AttributeError(f"module 'bcct' has no attribute {name!r}")
