"""lgmstm's version, the one place it is written: lgmstm.__version__, the
build (pyproject.toml reads this literal without importing anything) and
show_config take it from here."""
__version__ = "0.1.0"
