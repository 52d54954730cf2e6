"""The pipeline's LoRA methods (diffusers' names), thin calls into :mod:`difflab.adapters.lora`;
peft is imported only when one is used."""

from __future__ import annotations

import sys


class LoraMethods:
    """Mixed into :class:`~difflab.pipelines.image.Pipeline`; acts on its network, ``self.model``."""

    def load_lora(self, path, scale: float = 1.0, name: str | None = None) -> str:
        """Load a LoRA file (diffusers, peft or kohya layout; a file or a folder holding one) at
        ``scale``; several combine, each with its own scale. Returns its name (default: the file's
        stem). A file whose keys match nothing in the network, or only some, is refused."""
        from difflab.adapters.lora import load_lora
        return load_lora(self.model, path, scale, name)

    def unload_lora(self, name: str | None = None):
        """Remove LoRA ``name`` (None: all); the network is then exactly as before loading."""
        from difflab.adapters.lora import unload_lora
        unload_lora(self.model, name)
        return self

    def set_lora_scale(self, name: str, scale: float):
        """Change a loaded LoRA's scale."""
        from difflab.adapters.lora import set_lora_scale
        set_lora_scale(self.model, name, scale)
        return self

    def fuse_lora(self):
        """Merge the loaded LoRAs into the weights at their scales; :meth:`unfuse_lora` undoes it."""
        from difflab.adapters.lora import fuse_lora
        fuse_lora(self.model)
        return self

    def unfuse_lora(self):
        from difflab.adapters.lora import unfuse_lora
        unfuse_lora(self.model)
        return self

    @property
    def loras(self) -> list:
        """The loaded LoRAs (name, path, sha256, scale, modules), in loading order."""
        from difflab.adapters.lora import loaded_loras
        return loaded_loras(self.model)

    def _lora_recipe(self) -> dict:
        """The recipe's ``loras`` entry (name, sha256, scale of each loaded LoRA); empty without any.
        peft is not imported for it: with difflab.adapters.lora never imported, none can be loaded."""
        if "difflab.adapters.lora" not in sys.modules or not self.loras:
            return {}
        return {"loras": [{"name": lora.name, "sha256": lora.sha256, "scale": lora.scale} for lora in self.loras]}

    def _check_recipe_loras(self, recipe: dict) -> None:
        """A recipe made with LoRAs replays only with the same files at the same scales loaded."""
        def key(entries):
            return sorted((e["sha256"], float(e["scale"])) for e in entries)
        wanted, have = recipe.get("loras") or [], self._lora_recipe().get("loras", [])
        if key(wanted) != key(have):
            names = ", ".join(f"{e['name']}:{e['scale']:g}" for e in wanted) or "none"
            raise ValueError(f"the recipe was made with LoRAs {names}; load the same files at the same scales "
                             f"(pipe.load_lora / --lora PATH:SCALE) to replay it"[:300])

