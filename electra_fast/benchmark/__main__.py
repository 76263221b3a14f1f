"""`python -m electra_fast.benchmark PAYLOAD`: the memory probe's subprocess (see `measure.probe_memory`)."""
import sys

from .runner import memory_probe_main

memory_probe_main(sys.argv[1])
