"""Long, time-boxed runs of the wire layer's properties: ``python -m fuzz --minutes N``.

The properties are the ones tests/wire runs in CI (same functions, same strategies
from tests/strategies.py); here they run under the ``fuzz`` hypothesis profile, in
batches, until the time is up. See fuzz/README.md.
"""
