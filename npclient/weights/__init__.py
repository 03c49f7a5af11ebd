"""SAE weights joined with mirrored features: row i of `W_dec` is Neuronpedia feature i.

    from npclient.weights import attach, decoder
    attach(mirror.db, "gpt2-small/7-res-jb")                      # sae_lens registry + HF cache
    attach(mirror.db, "gpt2-small/7-res-jb", path="sae_folder/")  # cfg.json + sae_weights.safetensors
    attach(mirror.db, "gpt2-small/7-res-jb", path="w.safetensors", tensor="W_dec", transpose=False)
    W = decoder(mirror.db, "gpt2-small/7-res-jb")                 # torch tensor, d_sae x d_in

Importing this package imports neither torch nor sae_lens: the functions that need them
import them (sae_lens only to load from a folder or the registry).
"""

from __future__ import annotations

from .attach import (
    DTYPES,
    WEIGHTS_COLUMNS,
    WeightsRecord,
    attach,
    decoder,
    decoder_array,
    decoder_norms,
    get_weights,
    list_weights,
    weights_root,
)
from .loaders import LOADERS, DecoderLoader, LoadedDecoder, LoadRequest, read_safetensors_header, register_loader
from .registry import RegistryEntry, Resolution, lookup, neuronpedia_id, registry_index, resolve

__all__ = [
    "DTYPES",
    "DecoderLoader",
    "LOADERS",
    "LoadRequest",
    "LoadedDecoder",
    "RegistryEntry",
    "Resolution",
    "WEIGHTS_COLUMNS",
    "WeightsRecord",
    "attach",
    "decoder",
    "decoder_array",
    "decoder_norms",
    "get_weights",
    "list_weights",
    "lookup",
    "neuronpedia_id",
    "read_safetensors_header",
    "register_loader",
    "registry_index",
    "resolve",
    "weights_root",
]
