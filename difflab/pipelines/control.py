"""The pipeline's ControlNet methods (Zhang et al. 2023; the network: :mod:`difflab.models.controlnet`).

    pipe = Pipeline.from_pretrained("shapes", controlnet="runs/layout/model")
    pipe.load_controlnet("runs/edges/model")                 # several steer at once, each with its image
    pipe("a red circle", control_image=[layout, edges], control_scale=[1.0, 0.5], control_end=0.8)

A control image is an RGB image (a path or a PIL image) of the output's size, or of the same aspect
ratio, which is then resized to it (box filter when shrinking, bilinear when enlarging); another
aspect ratio is refused. ``control_start`` / ``control_end`` (0..1) bound the part of the sampling
where a ControlNet acts, as fractions of the noise level's way down (0: pure noise, 1: clean). The
recipe records each ControlNet's weights, scale, window and the control image's hash; a replay needs
the same images again (``replay(recipe, control_image=...)``).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

CONTROL_SCALE_RANGE = (0.0, 10.0)


class ControlMethods:
    """Mixed into :class:`~difflab.Pipeline`; it keeps its ControlNets in ``self.controlnets``
    (``[(name, network, weights hash), ...]``)."""

    def load_controlnet(self, folder) -> "ControlMethods":
        """Load a ControlNet package trained for this pipeline's network (``difflab train --controlnet``), or
        a diffusers ControlNet folder (``ControlNetModel``, SD 1.x/2.x or SDXL) made for its SD UNet."""
        from difflab.convert.diffusers_controlnet import is_diffusers_controlnet, load_diffusers_controlnet
        from difflab.convert.diffusers_folder import SDKeywords
        from difflab.convert.keymap import weights_hash as folder_hash
        from difflab.models.controlnet import ControlNet
        from difflab.models.package import load_package
        from difflab.pipelines.recipes import weights_hash
        from difflab.settings import package_folder

        folder = package_folder(folder)
        if is_diffusers_controlnet(folder):
            if not isinstance(self.model, SDKeywords):     # the SD UNet inside the adapter of its keywords
                raise ValueError(f"the ControlNet in {folder} steers a Stable Diffusion UNet; this pipeline's "
                                 f"network is a {type(self.model).__name__}")
            net = load_diffusers_controlnet(folder, steering=self.model.unet)     # refused before a tensor is read
            net = self.model.around(net).to(self.device, self.dtype)   # called with the same keywords as the UNet
            self.controlnets.append((folder.name, net, folder_hash(folder)))   # the id diffusers UNet folders get
            return self
        package = load_package(folder)
        net = package.model
        if not isinstance(net, ControlNet):
            raise ValueError(f"{folder} holds a {type(net).__name__}, not a ControlNet (a package made by "
                             "difflab train --controlnet)")
        if not net.steers(self.model):
            raise ValueError(f"the ControlNet in {folder} was trained for another network than this pipeline's "
                             f"({package.metadata.get('controlnet', {}).get('base', 'unknown base')})")
        self.controlnets.append((folder.name, net.to(self.device, self.dtype), weights_hash(folder)))
        return self

    def unload_controlnets(self) -> "ControlMethods":
        self.controlnets.clear()
        return self

    def _controls(self, control_image, control_scale, control_start, control_end, size, deep_cache,
                  n_images: int) -> list:
        """The :class:`~difflab.models.controlnet.Control` list of one call, every argument checked first.
        Each ControlNet takes one image for every output, or a list of one per output image (with a
        single ControlNet, a plain list of ``n_images`` > 1 images)."""
        from difflab.data.images import to_unit_tensor
        from difflab.models.controlnet import Control

        if control_image is None:
            return []
        if not self.controlnets:
            raise ValueError("control_image needs a ControlNet: Pipeline.from_pretrained(..., controlnet=PATH) "
                             "or pipe.load_controlnet(PATH)")
        if deep_cache not in (None, 1):
            raise ValueError("deep_cache and a ControlNet do not combine: the cached deep feature ignores the control")
        n = len(self.controlnets)
        images = _images_per_net(control_image, n)
        scales = _per_net(control_scale, n, "control_scale")
        for scale in scales:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
                    not CONTROL_SCALE_RANGE[0] <= scale <= CONTROL_SCALE_RANGE[1]:
                raise ValueError(f"control_scale must be a number in {list(CONTROL_SCALE_RANGE)}, got {scale!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (control_start, control_end)) \
                or not 0 <= control_start < control_end <= 1:
            raise ValueError(f"control_start and control_end must satisfy 0 <= start < end <= 1, "
                             f"got {control_start!r}, {control_end!r}")
        controls = []
        for (name, net, _), image, scale in zip(self.controlnets, images, scales):
            side = (size[0] * net.hint_stride // self.codec.size_multiple(1),
                    size[1] * net.hint_stride // self.codec.size_multiple(1))
            batch = image if isinstance(image, (list, tuple)) else [image]
            if len(batch) not in (1, n_images):
                raise ValueError(f"control_image for {name}: give one image, or one per output image ({n_images}), "
                                 f"got {len(batch)}")
            pixels = to_unit_tensor([_fit(open_image(im), side, name) for im in batch])
            controls.append(Control(net, pixels.to(self.device, self.dtype), float(scale), float(control_start),
                                    float(control_end)))
        return controls

    def _controlled(self, network, controls: list):
        """``network`` with the controls' residuals added at every call."""
        from difflab.models.controlnet import control_residuals
        steps = self.schedule.num_train_timesteps

        def run(x, t, **cond):
            return network(x, t, control_residuals=control_residuals(controls, x, t, cond, steps), **cond)
        return run

    def _control_recipe(self, controls: list, control_image, index: int) -> dict:
        """Output image ``index``'s ``controlnets`` recipe entry (its own control image's hash)."""
        if not controls:
            return {}
        from difflab.pipelines.edit import image_hash
        images = [im[index if len(im) > 1 else 0] if isinstance(im, (list, tuple)) else im
                  for im in _images_per_net(control_image, len(controls))]
        return {"controlnets": [{"name": name, "weights": weights, "scale": c.scale, "start": c.start, "end": c.end,
                                 "image": image_hash(open_image(image))}
                                for (name, _, weights), c, image in zip(self.controlnets, controls, images)]}

    def _replay_controls(self, recipe: dict, control_image) -> dict:
        """The control arguments of a recipe's replay; the same ControlNets and images are required."""
        from difflab.pipelines.edit import image_hash
        wanted = recipe.get("controlnets") or []
        if not wanted:
            return {}
        if [w.get("weights") for w in wanted] != [weights for _, _, weights in self.controlnets]:
            raise ValueError("this recipe was made with ControlNets "
                             f"{[w.get('name') for w in wanted]}: load the same ones, in the same order")
        if control_image is None:
            raise ValueError("this recipe was made with control images: pass them again (control_image=)")
        images = _per_net(control_image, len(wanted), "control_image")
        if [image_hash(open_image(im)) for im in images] != [w.get("image") for w in wanted]:
            raise ValueError("control_image differs from the one the recipe was made with")
        return {"control_image": control_image, "control_scale": [w["scale"] for w in wanted],
                "control_start": wanted[0]["start"], "control_end": wanted[0]["end"]}


def _images_per_net(control_image, n: int) -> list:
    """One entry (an image, or a list of one per output image) per ControlNet."""
    if n == 1 and isinstance(control_image, (list, tuple)) and len(control_image) > 1:
        return [list(control_image)]
    return _per_net(control_image, n, "control_image")


def _per_net(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != n:
        raise ValueError(f"{name}: give one per loaded ControlNet ({n}), got {len(values)}")
    return values


def open_image(image, name: str = "control_image") -> Image.Image:
    """A PIL image, or an image file's path, as RGB; ``name`` (the argument) in every error."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{name} {image}: no such file")
        with Image.open(path) as opened:
            return opened.convert("RGB")
    if not isinstance(image, Image.Image):
        raise ValueError(f"{name} must be a PIL image or an image file's path, got {type(image).__name__}")
    return image.convert("RGB")


def _fit(image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
    """``image`` at ``size``: resized when only the scale differs; another aspect ratio is refused."""
    if image.size == size:
        return image
    if abs(image.width * size[1] - image.height * size[0]) > max(size) * 0.01 * min(image.size):
        raise ValueError(f"control_image for {name} is {image.width}x{image.height}; the output needs "
                         f"{size[0]}x{size[1]} (or the same aspect ratio, which is resized)")
    shrink = image.width > size[0]
    return image.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
