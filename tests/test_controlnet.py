"""ControlNet on difflab's UNet (Zhang et al. 2023): the copy starts as the UNet's encoder and changes
nothing; training moves only the ControlNet; the pipeline applies one or several with their scales,
windows and per-image control images; recipes replay; bad input is refused before any compute."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import difflab
from difflab.data.controls import layout_map
from difflab.data.shapes import scene_for
from difflab.models.controlnet import Control, ControlNet, control_residuals
from difflab.models.package import load_package
from difflab.train import Trainer, build_config, preset
from test_train import assert_resume_is_exact

TINY = preset("tiny").replace(threads=1)
quiet = lambda *a: None


@pytest.fixture(scope="module")
def base(tiny_base):
    return tiny_base


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """A ControlNet trained 3 steps at a large learning rate, so its zero convolutions moved."""
    out = tmp_path_factory.mktemp("cn") / "run"
    config = TINY.replace(max_steps=3, checkpoint_every=0, init_from=str(base), controlnet="layout", lr=5e-2,
                          lr_warmup=0, ema_decay=0.0, ema_warmup=False)
    return Trainer(config, out, log=quiet).fit()


def _inputs(unet, batch=2):
    torch.manual_seed(0)
    side = 16
    cfg = unet.config
    return (torch.randn(batch, cfg.in_channels, side, side), torch.tensor([700.0, 20.0][:batch]),
            torch.rand(batch, 3, side, side), torch.randn(batch, 5, cfg.context_dim), torch.randn(batch, cfg.pooled_dim))


def test_a_new_controlnet_copies_the_encoder_and_changes_nothing(base):
    unet = load_package(base).model
    net = ControlNet.from_unet(unet).eval()
    x, t, control, context, pooled = _inputs(unet)
    with torch.no_grad():
        skips, mid = net(x, t, control, context=context, pooled=pooled)
        assert all(s.abs().max() == 0 for s in skips) and mid.abs().max() == 0
        plain = unet(x, t, context=context, pooled=pooled)
        assert torch.equal(unet(x, t, context=context, pooled=pooled, control_residuals=(skips, mid)), plain)
        for conv in [*net.zero_convs, net.zero_mid]:          # open the zero convolutions: the copy's features
            torch.nn.init.dirac_(conv.weight)
        skips, mid = net(x, t, control, context=context, pooled=pooled)
    assert len(skips) == len(net.skip_widths())
    state = unet.state_dict()
    copied = [k for k, v in net.state_dict().items() if k in state and not k.startswith("scale_shift")]
    assert copied and all(torch.equal(net.state_dict()[k], state[k]) for k in copied)


def test_residuals_of_several_controls_add_with_their_scales_and_windows(base):
    unet = load_package(base).model
    nets = [ControlNet.from_unet(unet).eval() for _ in range(2)]
    for i, net in enumerate(nets):
        torch.manual_seed(i)
        for conv in [*net.zero_convs, net.zero_mid]:
            torch.nn.init.normal_(conv.weight, std=0.1)
    x, t, control, context, pooled = _inputs(unet, 1)
    cond = {"context": context, "pooled": pooled}
    with torch.no_grad():
        one = [net(x, t, control, **cond) for net in nets]
        both = control_residuals([Control(nets[0], control, 0.5), Control(nets[1], control, 2.0)], x, t, cond)
        late = control_residuals([Control(nets[0], control, 1.0, start=0.5)], x, t, cond)  # t = 700: not yet
    assert torch.allclose(both[1], 0.5 * one[0][1] + 2.0 * one[1][1], atol=1e-6)
    assert all(torch.allclose(b, 0.5 * a + 2.0 * c, atol=1e-6) for b, a, c in zip(both[0], one[0][0], one[1][0]))
    assert late is None


def test_training_moves_only_the_controlnet_and_exports_it_alone(base, trained):
    package = load_package(trained)
    assert type(package.model).__name__ == "ControlNet"
    assert package.metadata["controlnet"] == {"kind": "layout", "base": str(base)}
    assert package.model.steers(load_package(base).model)
    fresh = ControlNet.from_unet(load_package(base).model).state_dict()
    moved = [k for k, v in package.model.state_dict().items() if not torch.equal(v, fresh[k])]
    assert any(k.startswith("zero_convs.") for k in moved) and any(k.startswith("hint.") for k in moved)
    checkpoint = next((trained.parent / "checkpoints").iterdir())
    weights = load_file(checkpoint / "model.safetensors")
    base_weights = load_file(base / "model.safetensors")
    assert all(torch.equal(weights[f"unet.{k}"], v) for k, v in base_weights.items())   # the base stayed frozen


def test_a_controlnet_run_resumes_exactly(base, tmp_path):
    assert_resume_is_exact(["train", "--preset", "tiny", "--init-from", str(base), "--controlnet", "layout",
                            "--max-steps", "6", "--checkpoint-every", "2", "--threads", "1"], tmp_path)


def test_the_pipeline_steers_replays_and_takes_one_control_per_image(base, trained):
    plain = difflab.Pipeline.from_pretrained(base)
    pipe = difflab.Pipeline.from_pretrained(base, controlnet=trained)
    controls = [layout_map(scene_for(p, 1), 16) for p in ("a circle in the top left", "two squares")]
    prompts = ["a red circle", "two blue squares"]
    reference = plain(prompts, seed=3, steps=4).images
    zero = pipe(prompts, seed=3, steps=4, control_image=controls, control_scale=0.0).images
    steered = pipe(prompts, seed=3, steps=4, control_image=controls)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(zero, reference))
    diffs = [np.abs(np.asarray(a, int) - np.asarray(b)).max() for a, b in zip(steered.images, reference)]
    assert min(diffs) >= 2
    alone = pipe(prompts[1], seed=4, steps=4, control_image=controls[1]).images[0]   # seed 3 + 1
    assert np.array_equal(np.asarray(alone), np.asarray(steered.images[1]))
    recipes = steered.recipes
    assert recipes[0]["controlnets"][0]["image"] != recipes[1]["controlnets"][0]["image"]
    again = pipe.replay(recipes[1], control_image=controls[1]).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(steered.images[1]))
    with pytest.raises(ValueError, match="differs from the one the recipe was made with"):
        pipe.replay(recipes[1], control_image=controls[0])
    with pytest.raises(ValueError, match="pass them again"):
        pipe.replay(recipes[1])
    window = pipe(prompts, seed=3, steps=4, control_image=controls, control_start=0.9).images
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(window, steered.images))


def test_bad_control_input_is_refused_before_any_compute(base, trained, tmp_path):
    pipe = difflab.Pipeline.from_pretrained(base, controlnet=trained)
    control = layout_map(scene_for("a circle", 0), 16)
    cases = [(dict(control_image=control.resize((24, 16))), "the same aspect ratio"),
             (dict(control_image=control, control_scale=11), "control_scale must be a number in"),
             (dict(control_image=control, control_start=0.6, control_end=0.4), "0 <= start < end <= 1"),
             (dict(control_image=[control, control, control]), "one per output image"),
             (dict(control_image=str(tmp_path / "missing.png")), "no such file")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(["a red circle", "a blue square"], seed=0, steps=2, **kwargs)
    with pytest.raises(ValueError, match="needs a ControlNet"):
        difflab.Pipeline.from_pretrained(base)("a red circle", control_image=control)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="not a ControlNet"):
        difflab.Pipeline.from_pretrained(base, controlnet=base)
    with pytest.raises(ValueError, match="trained for another network"):
        difflab.Pipeline.from_pretrained("shapes", controlnet=trained)
    for fields, message in [(dict(controlnet="layout"), "used with init_from"),
                            (dict(controlnet="depth", init_from=str(base)), "controlnet"),
                            (dict(controlnet="layout", init_from=str(base), lora_rank=2), "without lora_rank"),
                            (dict(controlnet="layout", init_from=str(base), dataset="digits"), "dataset=shapes")]:
        with pytest.raises(ValueError, match=message):
            TINY.replace(**fields)
    assert build_config(None, None, {"init_from": str(base), "controlnet": "edges"}).resolution == TINY.resolution


def test_the_bundled_layout_controlnet_places_objects_where_the_map_says():
    from difflab.metrics.layout import layout_iou
    from difflab.settings import BUNDLED_MODELS
    assert (BUNDLED_MODELS["shapes-layout"] / "MODEL_CARD.md").is_file()
    pipe = difflab.Pipeline.from_pretrained("shapes-v1", controlnet="shapes-layout")   # its base
    prompts = ["a red circle", "two blue squares"]        # no place in the prompt: the layout's alone
    controls = [layout_map(scene_for(p, 7)) for p in prompts]
    controlled = pipe(prompts, seed=2, control_image=controls).images
    free = difflab.Pipeline.from_pretrained("shapes-v1")(prompts, seed=2).images
    ious = [layout_iou(im.convert("RGB"), c)["mean_iou"] for im, c in zip(controlled, controls)]
    free_ious = [layout_iou(im.convert("RGB"), c)["mean_iou"] for im, c in zip(free, controls)]
    assert min(ious) > 0.75 and max(free_ious) < 0.5, (ious, free_ious)
    with pytest.raises(ValueError, match="is a ControlNet for shapes-v1, not a model"):
        difflab.Pipeline.from_pretrained("shapes-layout")


def test_a_run_goes_on_from_an_exported_controlnet_and_refuses_another_kind(base, trained, tmp_path):
    config = TINY.replace(max_steps=1, checkpoint_every=0, init_from=str(base), controlnet="layout",
                          side_from=str(trained))
    trainer = Trainer(config, tmp_path / "on", log=quiet)
    start = trainer.accelerator.unwrap_model(trainer.model).controlnet.state_dict()
    exported = load_package(trained).model.state_dict()
    assert all(torch.equal(start[k], v) for k, v in exported.items())   # its weights, not a fresh copy
    assert any(v.abs().sum() > 0 for k, v in exported.items() if "zero" in k)
    with pytest.raises(ValueError, match="for 'layout' control images; this run trains one for 'edges'"):
        Trainer(config.replace(controlnet="edges"), tmp_path / "edges", log=quiet)
    with pytest.raises(ValueError, match="holds a UNet, not the ControlNet"):
        Trainer(config.replace(side_from=str(base)), tmp_path / "unet", log=quiet)
    with pytest.raises(ValueError, match="side_from"):
        TINY.replace(side_from=str(trained))                          # without controlnet / ip_adapter
