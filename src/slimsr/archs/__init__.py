"""Architecture families. Importing this package registers every variant and detector.

The list is explicit (no folder scanning): detection order is this order, so families whose
keys could be mistaken for another's come first.
"""

from slimsr.archs import abpn, bsrn, edsr, fmen, rfdn, swinir

__all__ = ["abpn", "bsrn", "edsr", "fmen", "rfdn", "swinir"]
