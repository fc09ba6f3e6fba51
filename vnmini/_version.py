"""The one place vnmini's version lives (pyproject reads it; ``vnmini.__version__`` re-exports it)."""

__version__ = "0.1.0"
