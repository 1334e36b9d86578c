"""Fused inference forms: the CPU inference engine, kept apart from the networks (`archs/`).

Built from a trained network by `fuse(net)`, a fused form computes what the plain forward
computes (to float rounding) with fewer passes over memory: channels-last tensors throughout
(depthwise and 3x3 convs run several times faster in oneDNN than on NCHW); each concatenation
feeding a 1x1 conv replaced by a running sum of 1x1 convs over the parts, so no concatenated
copy is allocated; chains of linear layers folded into one; `conv(x) + x` as one conv;
activations and residual additions in place; and, for float32 on a CPU, oneDNN's fused
conv + activation and conv + add kernels. Their tensors are non-persistent buffers: a fused
module is never trained and never saved (empty state_dict).

- `kernels`: the oneDNN calls, the packed-weight cache, `Act`;
- `modules`: fused modules shared by families (`FusedConv`, `FusedESA`, `FusedDistillation`);
- one file per family with a fused form (`abpn`, `bsrn`, `edsr`, `fmen`, `rfdn`, `rlfn`,
  `safmn`, `smfanet`, `span`, `swinir`),
  each registering its builder in `FUSED_FORMS` with `@fused_form(NetworkClass)`. Importing
  this package imports them all, so the map is complete whenever `fuse` can be called.

Imports point one way: this package reads `slimsr.archs`; the networks know nothing of it.
"""

from slimsr.fused import abpn, bsrn, edsr, fmen, rfdn, rlfn, safmn, smfanet, span, swinir
from slimsr.fused.forms import FUSED_FORMS, fuse, fused_form, has_fused_form

__all__ = [
    "FUSED_FORMS",
    "abpn",
    "bsrn",
    "edsr",
    "fmen",
    "fuse",
    "fused_form",
    "has_fused_form",
    "rfdn",
    "rlfn",
    "safmn",
    "smfanet",
    "span",
    "swinir",
]
