"""slimsr: efficient single-image super-resolution.

Public API (everything else is an implementation detail):

    model = slimsr.load("bsrn_x2.pth")                 # architecture + scale detected from keys
    model = slimsr.create_model("fmen_s", scale=4, weights="fmen_s_x4.safetensors")
    sr = model(lr)                                     # float RGB in [0,1], NCHW, any size
    pil = slimsr.upscale_image(model, "photo.jpg")     # a picture, made as `slimsr upscale` does
    slimsr.upscale_file(model, "photo.png", "out/photo_x4.png")  # streamed, atomic
"""

from slimsr.errors import CheckpointError, SlimsrError, UnknownModelError, UnsupportedScaleError
from slimsr.factory import create_model, load, save
from slimsr.model import SRModel
from slimsr.registry import ModelInfo, build_network, get_model_info, list_models, register_model
from slimsr.upscale import upscale_file, upscale_image

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ModelInfo",
    "SRModel",
    "SlimsrError",
    "UnknownModelError",
    "UnsupportedScaleError",
    "__version__",
    "build_network",
    "create_model",
    "get_model_info",
    "list_models",
    "load",
    "register_model",
    "save",
    "upscale_file",
    "upscale_image",
]
