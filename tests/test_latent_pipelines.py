"""Latent pipelines (a VAECodec behind the sampler): inpainting and outpainting keep every unmasked
pixel exactly, with every sampler; seeds are batch-invariant in latent space; and image-to-image
strength is a noise level (SDEdit), the same start whatever the sigma spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.codecs import VAECodec
from difflab.data.shapes import render
from difflab.models.text import ClassLabelEncoder
from difflab.models.unet import UNet
from difflab.models.vae import AutoencoderKL
from difflab.sampling import edit_sigmas
from difflab.samplers import SAMPLERS

IMAGE = render("a red circle in the center", seed=0, resolution=16)
MASK = Image.new("L", (16, 16), 0)
MASK.paste(255, (0, 0, 5, 16))  # 5 columns: the latent cell of columns 4-5 straddles the seam
KEEP = np.asarray(MASK) == 0


def tiny_latent_pipeline(schedule=None, prediction_type="v_prediction") -> difflab.Pipeline:
    torch.manual_seed(0)
    vae = AutoencoderKL(channels=(16, 32), latent_channels=4, norm_groups=8).eval()
    model = UNet(in_channels=4, out_channels=4, channels=(16, 32), attention_levels=(), norm_groups=8,
                 num_classes=3).eval()
    schedule = schedule or difflab.NoiseSchedule.cosine(rescale_zero_terminal_snr=True)
    return difflab.Pipeline(model, schedule, prediction_type, ClassLabelEncoder(["a", "b", "c"]), VAECodec(vae),
                            resolution=16, name="latent")


@pytest.fixture(scope="module")
def pipe():
    return tiny_latent_pipeline()


def px(image) -> np.ndarray:
    return np.asarray(image)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_keeps_the_unmasked_pixels_exactly(pipe, sampler):
    assert pipe.vae is not None and pipe.codec.downsampling == 2
    inpainted = px(pipe(1, image=IMAGE, mask=MASK, seed=2, steps=4, sampler=sampler, mask_blur=1.5).images[0])
    assert np.array_equal(inpainted[KEEP], px(IMAGE)[KEEP])
    assert not np.array_equal(inpainted[~KEEP], px(IMAGE)[~KEEP])
    extended = pipe(1, image=IMAGE, outpaint=(4, 0, 0, 4), seed=2, steps=4, sampler=sampler)
    assert extended.images[0].size == (20, 20)
    assert np.array_equal(px(extended.images[0])[:16, 4:], px(IMAGE))


def test_the_saved_image_keeps_the_unmasked_pixels_exactly(pipe, tmp_path):
    path = pipe(1, image=IMAGE, mask=MASK, seed=1, steps=3).save(tmp_path)[0]
    assert np.array_equal(px(Image.open(path).convert("RGB"))[KEEP], px(IMAGE)[KEEP])


def test_a_latent_cell_is_regenerated_when_any_of_its_pixels_is_masked(pipe):
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :5] = torch.linspace(1, 0.2, 5)  # feathered: soft values inside the hole
    latent = pipe.codec.downsample_mask(mask)
    assert latent.shape == (1, 1, 8, 8)
    assert torch.equal(latent[..., :3], torch.ones(1, 1, 8, 3)) and not latent[..., 3:].any()


@pytest.mark.parametrize("mode", [{}, dict(image=IMAGE, mask=MASK), dict(image=IMAGE, strength=0.5)])
def test_a_batch_of_three_equals_three_single_runs(pipe, mode):
    batch = pipe([0, 1, 2], seed=7, steps=3, sampler="euler_ancestral", **mode)
    assert [r["seed"] for r in batch.recipes] == [7, 8, 9]
    for i in range(3):
        single = pipe(i, seed=7 + i, steps=3, sampler="euler_ancestral", **mode)
        assert np.array_equal(px(batch.images[i]), px(single.images[0]))


def test_strength_zero_is_the_input_and_one_is_text_to_image(pipe):
    assert np.array_equal(px(pipe(0, image=IMAGE, strength=0.0, seed=0, steps=4).images[0]), px(IMAGE))
    full = pipe(0, image=IMAGE, strength=1.0, seed=3, steps=4).images[0]
    assert np.array_equal(px(full), px(pipe(0, seed=3, steps=4).images[0]))


class Recording(torch.nn.Module):
    """A network that records the model times it is asked about."""

    def __init__(self, model):
        super().__init__()
        self.model, self.times = model, []

    def forward(self, x, t, **cond):
        self.times.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return self.model(x, t, **cond)


@pytest.mark.parametrize("schedule,prediction_type", [
    (difflab.NoiseSchedule.cosine(rescale_zero_terminal_snr=True), "v_prediction"),
    (difflab.NoiseSchedule.scaled_linear(), "epsilon"),
    (difflab.NoiseSchedule.flow(shift=3.0), "flow"),
])
def test_strength_starts_at_one_noise_level_whatever_the_spacing(schedule, prediction_type):
    pipe = tiny_latent_pipeline(schedule, prediction_type)
    pipe.model = Recording(pipe.model)
    spacings = ["karras", "linspace", "trailing", "exponential"] + ([] if schedule.is_flow else ["leading"])
    starts, first_sigmas = [], []
    for spacing in spacings:
        pipe.model.times.clear()
        pipe(0, image=IMAGE, strength=0.5, seed=0, steps=10, sampler="euler", spacing=spacing)
        starts.append(pipe.model.times[0])
        grid = edit_sigmas(schedule, 10, spacing, 0.5)
        first_sigmas.append(float(grid[0]))
        assert len(grid) - 1 == 5 and len(pipe.model.times) == 5  # strength * steps euler steps
    assert max(first_sigmas) - min(first_sigmas) < 1e-9 * max(first_sigmas)
    assert max(starts) - min(starts) < 1e-3
    last = schedule.num_train_timesteps - (0 if schedule.is_flow else 1)
    expected = 0.5 if not schedule.is_flow else 3 * 0.5 / (1 + 2 * 0.5)  # flow: on the shifted grid (SD3)
    assert abs(starts[0] - expected * last) < 1e-3


def test_strength_lands_where_diffusers_img2img_starts_on_its_trailing_grid():
    from diffusers import DDIMScheduler
    schedule = difflab.NoiseSchedule.cosine(rescale_zero_terminal_snr=True)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                              timestep_spacing="trailing")
    for steps, strength in ((20, 0.3), (20, 0.5), (50, 0.75), (10, 0.9)):
        scheduler.set_timesteps(steps)
        t_start = steps - int(steps * strength)  # diffusers' StableDiffusionImg2ImgPipeline.get_timesteps
        theirs = float(scheduler.timesteps[t_start])
        ours = float(schedule.t(edit_sigmas(schedule, steps, "karras", strength)[0]))
        # diffusers rounds strength down to whole steps of its grid: equal within one step
        assert abs(ours - theirs) <= 1000 / steps, (steps, strength, ours, theirs)
        if (steps * strength).is_integer():
            assert abs(ours - theirs) <= 1.0, (steps, strength, ours, theirs)


def test_strength_one_starts_from_pure_noise_and_small_strengths_run_one_step():
    schedule = difflab.NoiseSchedule.cosine(rescale_zero_terminal_snr=True)
    assert torch.isinf(edit_sigmas(schedule, 8, "karras", 1.0)[0])
    assert torch.equal(edit_sigmas(schedule, 8, "linspace", 1.0), schedule.sigmas(8, "linspace"))
    tiny = edit_sigmas(schedule, 4, "karras", 0.01)
    assert len(tiny) == 2 and 0 < float(tiny[0]) < 0.05
