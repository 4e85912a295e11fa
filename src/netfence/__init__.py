"""netfence: run untrusted workloads behind a network fence.

Layers, top to bottom (data flows one way):
profile -> policy -> backends -> runtimes -> cli.
"""

__version__ = "0.1.0"
