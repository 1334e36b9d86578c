"""The training side of full-integer INT8: quantisation-aware training (`qat`) and the plain-op
graph it is built on (`graph`), which the TFLite export rebuilds op for op.

Building, verifying and running deployment files is `slimsr.export`.
"""

from __future__ import annotations

from slimsr.quant.graph import QuantError, UnsupportedOpError, plain_graph
from slimsr.quant.qat import QATNet, calibrate, prepare_qat

__all__ = [
    "QATNet",
    "QuantError",
    "UnsupportedOpError",
    "calibrate",
    "plain_graph",
    "prepare_qat",
]
