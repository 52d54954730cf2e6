"""Adapters that wrap or extend a network and keep ``model(x_t, t, **cond)``: LoRA through peft.

Imports flow one way: adapters may import models/ and convert/; pipelines import adapters.
"""

from difflab.adapters.lora import (LoadedLora, fuse_lora, load_lora, loaded_loras, set_lora_scale, unfuse_lora,
                                   unload_lora)

__all__ = ["LoadedLora", "load_lora", "unload_lora", "set_lora_scale", "fuse_lora", "unfuse_lora", "loaded_loras"]
