"""A module that fails while being imported (loader test)."""

raise RuntimeError("this module is broken on purpose")
