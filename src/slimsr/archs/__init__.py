"""Architecture families. Importing this package registers every variant and detector.

The list is explicit (no folder scanning). Its order does not matter: `ModelRegistry.detect`
asks every family's detector and refuses weights that two families both claim.
"""

from slimsr.archs import abpn, bsrn, edsr, fmen, rfdn, rlfn, safmn, smfanet, span, swinir

__all__ = ["abpn", "bsrn", "edsr", "fmen", "rfdn", "rlfn", "safmn", "smfanet", "span", "swinir"]
