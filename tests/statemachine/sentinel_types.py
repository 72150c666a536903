"""Never imported except by a test that checks invalid names import nothing."""


class T:
    pass
