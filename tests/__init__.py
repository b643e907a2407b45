"""pvtunnel's tests; a package so that `fuzz/` can share `tests.strategies`."""
