"""Put first on the PYTHONPATH of the security suite's cluster processes: ``import torch`` fails fast.

A provider imports torch at start only to offer GPU devices and the ``train`` task type; importing it
costs seconds of CPU per process on this 2-core machine, and nothing in the security suite needs it
(DESIGN.md: a CPU-only provider runs without torch).
"""

raise ImportError("torch is hidden from the security suite's clusters (tests/security/no_torch)")
