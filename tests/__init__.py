"""Test suite package (lets shared helpers such as tests.lincheck be imported)."""
