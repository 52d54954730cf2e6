"""The area VAE (``encoder="area"``): a fixed area-pooling encoder and a learned residual decoder, the
second stage of a cascade. Its latent is the pooled image, its untrained decoder is bicubic upsampling,
it trains, it keeps its pixel scale at export, and ``cascade`` stacks it behind a pixel model whose
network and weights stay untouched while its images grow by the VAE's downscale."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from difflab.data import to_tensor
from difflab.models.vae import AutoencoderKL, AutoencoderKLConfig
from difflab.pipelines import Pipeline, base_of, cascade
from difflab.train import Trainer, TrainConfig, preset, train
from test_train import held_out_loss  # pytest puts tests/ on sys.path (prepend mode)

AREA = dict(class_name="AutoencoderKL", channels=(8, 16), norm_groups=4, latent_channels=3, mid_attention=False,
            encoder="area", posterior_std=0.05)
AREA_RUN = TrainConfig(task="vae", resolution=16, model=AREA, batch_size=8, max_steps=6, checkpoint_every=0,
                       lr=2e-3, lr_warmup=2, ema_decay=0.5, threads=1, log_every=3, kl_weight=0.0)
QUIET = dict(log=lambda *a: None)


def area_vae(**overrides) -> AutoencoderKL:
    torch.manual_seed(0)
    fields = {k: v for k, v in AREA.items() if k != "class_name"}
    fields["channels"] = tuple(fields["channels"])
    return AutoencoderKL(config=AutoencoderKLConfig(**{**fields, **overrides})).eval()


def test_the_latent_is_the_area_pooled_image_and_the_untrained_decoder_is_bicubic():
    vae = area_vae()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = vae.encode(x)
    assert torch.equal(posterior.mode(), F.avg_pool2d(x, 2))
    draws = posterior.sample(torch.Generator().manual_seed(1)) - posterior.mode()
    assert abs(draws.std().item() - 0.05) < 0.005                      # the fixed posterior's std
    z = posterior.mode()
    with torch.no_grad():
        assert torch.equal(vae.decode(z), F.interpolate(z, scale_factor=2, mode="bicubic", align_corners=False))
    assert not any(name.startswith("encoder.") for name in vae.state_dict())   # nothing to learn there


def test_area_config_refusals():
    for overrides, match in ((dict(latent_channels=4), "latent_channels == in_channels"),
                             (dict(channels=(8,)), "at least two levels"),
                             (dict(encoder="pixelshuffle"), "encoder must be one of"),
                             (dict(posterior_std=2.0), "posterior_std must be a number in"),
                             (dict(encoder="learned", latent_channels=4), "posterior_std is for encoder='area'")):
        with pytest.raises(ValueError, match=match):
            area_vae(**overrides)


def test_an_area_vae_trains_and_keeps_its_pixel_scale(tmp_path):
    run = AREA_RUN.replace(resolution=64, max_steps=80, lr=1e-3, lr_schedule="constant")
    trainer = Trainer(run, tmp_path / "run", **QUIET)
    positions = list(range(10**6, 10**6 + 32))
    before = held_out_loss(trainer, positions)                          # bicubic upsampling of noisy latents
    for _ in range(80):
        trainer.train_step()
    assert held_out_loss(trainer, positions) < 0.8 * before            # it learned to undo the posterior's noise
    package = trainer.export()
    vae = AutoencoderKL.from_pretrained(package)
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (1.0, 0.0)   # no normalisation measured
    assert vae.config.encoder == "area" and not any(k.startswith("encoder.") for k in load_file(package / "model.safetensors"))


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    base = train(preset("tiny").replace(max_steps=4, threads=1), root / "base", **QUIET)
    vae = train(AREA_RUN, root / "vae", **QUIET)
    return base, vae, cascade(base, vae, root / "stacked")


def test_cascade_keeps_the_network_and_doubles_the_images(stacked):
    base, vae, package = stacked
    low, high = Pipeline.from_pretrained(base), Pipeline.from_pretrained(package)
    assert high.resolution == 2 * low.resolution and high.vae is not None
    assert all(torch.equal(a, b) for a, b in zip(low.model.state_dict().values(), high.model.state_dict().values()))
    header = json.loads((package / "config.json").read_text())
    assert header["codec"] == {"type": "vae", "path": "vae"}
    record = header["training"]
    assert (record["task"], record["base"], record["vae"]) == ("cascade", str(base), str(vae))
    assert record["base_training"]["task"] == "denoise" and record["vae_training"]["task"] == "vae"
    a = to_tensor(low("a red circle", seed=3, steps=3).images)                  # [1, 3, 16, 16] in [-1, 1]
    b = to_tensor(high("a red circle", seed=3, steps=3).images)                 # [1, 3, 32, 32]
    assert b.shape[-1] == 2 * a.shape[-1]
    # the same sample, decoded: pooling the large image gives back the small one (but for 8-bit rounding)
    assert (F.avg_pool2d(b, 2) - a).abs().mean() < 0.05


def test_cascade_refuses_parts_that_do_not_fit(stacked, tmp_path):
    base, vae, package = stacked
    with pytest.raises(ValueError, match="not an image model in plain pixel space"):
        cascade(package, vae, tmp_path / "again")                    # already behind a VAE
    learned = train(TrainConfig(task="vae", resolution=16, model=dict(AREA, encoder="learned", posterior_std=0.0),
                                batch_size=4, max_steps=1, checkpoint_every=0, threads=1), tmp_path / "learned", **QUIET)
    with pytest.raises(ValueError, match="encoder='area'"):
        cascade(base, learned, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "again").exists()
    with pytest.raises(FileExistsError, match="exists"):
        cascade(base, vae, package)                                     # never over a folder


def test_base_of_takes_the_network_back_out_of_a_cascade(stacked, tmp_path):
    """base_of inverts cascade: the same weights, the small size, pixel space, and the same samples."""
    base, vae, package = stacked
    plain = base_of(package, tmp_path / "base")
    low, again = Pipeline.from_pretrained(base), Pipeline.from_pretrained(plain)
    assert again.vae is None and again.resolution == low.resolution
    assert all(torch.equal(a, b) for a, b in zip(low.model.state_dict().values(), again.model.state_dict().values()))
    assert json.loads((plain / "config.json").read_text())["training"]["task"] == "base_of"
    assert torch.equal(to_tensor(low("a red circle", seed=3, steps=3).images),
                       to_tensor(again("a red circle", seed=3, steps=3).images))
    with pytest.raises(ValueError, match="not a cascade"):
        base_of(base, tmp_path / "twice")                               # a pixel model has no decoder to drop
    with pytest.raises(FileExistsError, match="exists"):
        base_of(package, plain)
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("name", ["shapes-v2", "shapes-v2.1"])
def test_the_bundled_shapes_v2_draws_its_32x32_samples_at_64x64(name):
    import dataclasses
    from difflab.codecs import PixelCodec
    from difflab.settings import BUNDLED_MODELS

    folder = BUNDLED_MODELS[name]
    assert (folder / "MODEL_CARD.md").is_file()
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 40 * 2**20     # the issue's ~40 MB
    v2 = Pipeline.from_pretrained(name)
    assert v2.resolution == 64 and v2.vae.config.encoder == "area" and v2.vae.config.downscale == 2
    small = dataclasses.replace(v2, codec=PixelCodec(3), resolution=32)   # the same network, in pixel space
    prompt = "a red circle above a blue square"
    a, b = to_tensor(small(prompt, seed=0, steps=8).images), to_tensor(v2(prompt, seed=0, steps=8).images)
    other = to_tensor(small(prompt, seed=1, steps=8).images)                 # another sample, for scale
    assert b.shape[-2:] == (64, 64)
    # the decoder keeps what the sample drew (it smooths the sample's grain: a few levels per pixel)
    assert (F.avg_pool2d(b, 2) - a).abs().mean() < 0.15 * (other - a).abs().mean()
    if name == "shapes-v2.1":                     # v2's decoder, v2's network taught binding (its model card)
        parent = Pipeline.from_pretrained("shapes-v2")
        assert torch.equal(parent.vae.decoder.conv_out.weight, v2.vae.decoder.conv_out.weight)
        assert json.loads((folder / "config.json").read_text())["training"]["data"]["and_order"] == "reading"


def test_a_latent_package_trains_on_only_in_its_latent_space(stacked, tmp_path):
    from difflab.train.latents import load_vae
    base, vae, package = stacked
    with pytest.raises(ValueError, match=r"is a latent model .* --vae .* --resolution 32"):
        Trainer(preset("tiny").replace(init_from=str(package)), tmp_path / "pixel", **QUIET)   # would drop its decoder
    assert not (tmp_path / "pixel" / "checkpoints").exists()
    run = preset("tiny").replace(init_from=str(package), vae=str(package), resolution=32, max_steps=1, threads=1)
    again = Pipeline.from_pretrained(train(run, tmp_path / "latent", **QUIET))
    assert again.resolution == 32 and again.vae.config.encoder == "area"
    assert load_vae("shapes-v2").config.encoder == "area"             # --vae takes a bundled name too
