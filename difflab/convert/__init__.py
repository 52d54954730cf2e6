"""Foreign weights and settings into difflab's own objects: one explicit, shape-checked map per family.

Each module converts one family, e.g. :mod:`difflab.convert.diffusers_unet` (the Stable Diffusion
1.x / 2.x and SDXL UNets, from a diffusers ``unet/`` folder or the original single-file layout, into
:class:`difflab.models.sd_unet.SDUNet`). Modules are imported by name when needed; this package
imports nothing.
"""
