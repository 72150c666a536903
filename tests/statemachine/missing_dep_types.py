"""A module whose own dependency is missing (loader test)."""

import raftfleet_no_such_dependency  # noqa: F401


class T:
    pass
