"""The package version (level 0: any module may import it; keep it equal to pyproject.toml's)."""
__version__ = "0.1.0"
