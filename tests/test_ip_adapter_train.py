"""IP-Adapter training and sampling on difflab's UNet: only the adapter trains and exports alone; a run
resumes exactly; the pipeline reads an image prompt (scale 0 is the plain model), replays its recipe and
refuses bad input before any compute."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import difflab
from difflab.data.shapes import render
from difflab.models.package import load_package
from difflab.train import Trainer, preset
from test_train import assert_resume_is_exact

TINY = preset("tiny").replace(threads=1)
quiet = lambda *a: None


@pytest.fixture(scope="module")
def base(tiny_base):
    return tiny_base


def fit_adapter(base, out, steps=2, **fields):
    """A few fast steps of an IP-Adapter run on ``base`` (weights move visibly); its package folder."""
    return Trainer(TINY.replace(max_steps=steps, checkpoint_every=0, init_from=str(base), ip_adapter=True, lr=1e-2,
                                lr_warmup=0, ema_decay=0.0, ema_warmup=False, **fields), out, log=quiet).fit()


def assert_configs_refused(cases):
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            TINY.replace(**fields)


def assert_it_steers_the_pipeline(base, package):
    """``package`` on ``base``: at ip_scale 0 the plain model's image, otherwise another; the pipeline."""
    plain = difflab.Pipeline.from_pretrained(base)("", seed=3, steps=4).images[0]
    pipe = difflab.Pipeline.from_pretrained(base, ip_adapter=package)
    ref = render("a red circle and a blue square", 4, 16)
    assert np.array_equal(np.asarray(pipe("", seed=3, steps=4, ip_image=ref, ip_scale=0.0).images[0]), np.asarray(plain))
    assert not np.array_equal(np.asarray(pipe("", seed=3, steps=4, ip_image=ref).images[0]), np.asarray(plain))
    return pipe


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return fit_adapter(base, tmp_path_factory.mktemp("ip") / "run", steps=3)


def test_training_moves_only_the_adapter_and_exports_it_alone(base, adapter):
    from difflab.models.ip_adapter import IPAdapter
    package = load_package(adapter)
    assert isinstance(package.model, IPAdapter) and package.metadata["ip_adapter"] == {"base": str(base)}
    fresh = IPAdapter.from_unet(load_package(base).model, package.model.config.feature_dim).state_dict()
    moved = [k for k, v in package.model.state_dict().items() if not torch.equal(v, fresh[k])]
    assert any(k.startswith("image_proj.") for k in moved) and any(k.startswith("to_kv_ip.") for k in moved)
    weights = load_file(next((adapter.parent / "checkpoints").iterdir()) / "model.safetensors")
    assert all(torch.equal(weights[f"unet.{k}"], v) for k, v in load_file(base / "model.safetensors").items())


def test_an_ip_adapter_run_resumes_exactly(base, tmp_path):
    assert_resume_is_exact(["train", "--preset", "tiny", "--init-from", str(base), "--ip-adapter", "--max-steps", "6",
                            "--checkpoint-every", "2", "--threads", "1"], tmp_path)


def test_the_pipeline_reads_an_image_prompt_and_replays_it(base, adapter):
    plain = difflab.Pipeline.from_pretrained(base)
    pipe = difflab.Pipeline.from_pretrained(base, ip_adapter=adapter)
    refs = [render("a red circle", 1, 16), render("two blue squares", 2, 16)]
    prompts = ["", "a small cross"]
    reference = plain(prompts, seed=5, steps=4).images
    off = pipe(prompts, seed=5, steps=4, ip_image=refs, ip_scale=0.0).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(off, reference))
    steered = pipe(prompts, seed=5, steps=4, ip_image=refs)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(steered.images, reference))
    alone = pipe(prompts[1], seed=6, steps=4, ip_image=refs[1]).images[0]
    assert np.array_equal(np.asarray(alone), np.asarray(steered.images[1]))
    again = pipe.replay(steered.recipes[0], ip_image=refs[0]).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(steered.images[0]))
    with pytest.raises(ValueError, match="differs from the one the recipe was made with"):
        pipe.replay(steered.recipes[0], ip_image=refs[1])
    with pytest.raises(ValueError, match="pass it again"):
        pipe.replay(steered.recipes[0])


def test_a_package_scale_is_the_default_of_calls_without_one(base, adapter, tmp_path):
    import json
    import shutil

    from difflab.cli_checks import check_ip_flags
    chosen = tmp_path / "scaled"
    shutil.copytree(adapter, chosen)
    header = json.loads((chosen / "config.json").read_text())
    (chosen / "config.json").write_text(json.dumps(header | {"ip_adapter": header["ip_adapter"] | {"scale": 0.25}}))
    pipe, ref = difflab.Pipeline.from_pretrained(base, ip_adapter=chosen), render("a red circle", 1, 16)
    assert pipe.ip_scale_default == 0.25
    given = pipe("", seed=2, steps=3, ip_image=ref, ip_scale=0.25)
    default = pipe("", seed=2, steps=3, ip_image=ref)
    assert np.array_equal(np.asarray(default.images[0]), np.asarray(given.images[0]))
    assert default.recipes[0]["ip_adapter"]["scale"] == 0.25
    one = np.asarray(pipe("", seed=2, steps=3, ip_image=ref, ip_scale=1.0).images[0])
    assert not np.array_equal(one, np.asarray(default.images[0]))
    assert pipe.load_ip_adapter(adapter).ip_scale_default == 1.0       # a package without one: 1
    assert np.array_equal(np.asarray(pipe("", seed=2, steps=3, ip_image=ref).images[0]), one)
    ref.save(tmp_path / "ref.png")
    assert "ip_scale" not in check_ip_flags(str(chosen), str(tmp_path / "ref.png"), None)   # left to the package
    assert check_ip_flags(str(chosen), str(tmp_path / "ref.png"), 2.0)["ip_scale"] == 2.0
    for bad in (7, "1", True):
        (chosen / "config.json").write_text(json.dumps(header | {"ip_adapter": {"scale": bad}}))
        with pytest.raises(ValueError, match="ip_adapter.scale must be a number in"):
            pipe.load_ip_adapter(chosen)


def test_bad_image_prompts_are_refused(base, adapter, tmp_path):
    pipe = difflab.Pipeline.from_pretrained(base, ip_adapter=adapter)
    ref = render("a red circle", 1, 16)
    for kwargs, message in [(dict(ip_image=ref, ip_scale=6), "ip_scale must be a number in"),
                            (dict(ip_image=[ref, ref, ref]), "one per output image"),
                            (dict(ip_image=str(tmp_path / "none.png")), "no such file")]:
        with pytest.raises(ValueError, match=message):
            pipe(["a red circle", "a blue square"], seed=0, steps=2, **kwargs)
    with pytest.raises(ValueError, match="needs an IP-Adapter"):
        difflab.Pipeline.from_pretrained(base)("", ip_image=ref)
    with pytest.raises(ValueError, match="not an IP-Adapter"):
        difflab.Pipeline.from_pretrained(base, ip_adapter=base)
    with pytest.raises(ValueError, match="trained for another network"):
        difflab.Pipeline.from_pretrained("shapes", ip_adapter=adapter)
    for fields, message in [(dict(ip_adapter=True), "ip_adapter"),
                            (dict(ip_adapter=True, init_from=str(base), controlnet="layout"), "without controlnet")]:
        with pytest.raises(ValueError, match=message):
            TINY.replace(**fields)


def test_new_adapters_read_the_object_encoder_and_a_run_goes_on_from_one(base, adapter, tmp_path):
    config = load_package(adapter).model.config
    assert (config.image_encoder, config.feature_dim) == ("shapes-objects", 128)
    trainer = Trainer(TINY.replace(max_steps=1, checkpoint_every=0, init_from=str(base), ip_adapter=True,
                                   side_from=str(adapter)), tmp_path / "on", log=quiet)
    start = trainer.accelerator.unwrap_model(trainer.model).adapter.state_dict()
    assert all(torch.equal(start[k], v) for k, v in load_package(adapter).model.state_dict().items())
    with pytest.raises(ValueError, match="not the IPAdapter this run trains"):
        Trainer(TINY.replace(init_from=str(base), ip_adapter=True, side_from=str(base)), tmp_path / "x", log=quiet)


def test_a_grid_adapter_trains_on_cell_features_and_steers_the_pipeline(base, adapter, tmp_path):
    grid = fit_adapter(base, tmp_path / "grid", ip_tokens="grid")
    config = load_package(grid).model.config
    assert config.grid and config.num_tokens == 16 and config.image_encoder == "shapes-objects"
    assert_it_steers_the_pipeline(base, grid)
    assert_configs_refused([(dict(ip_tokens="grid"), "grid and objects with ip_adapter"),
                            (dict(ip_adapter=True, init_from=str(base), ip_tokens="cells"), "pooled, grid or objects")])
    with pytest.raises(ValueError, match="reads pooled image features; this run asks for ip_tokens='grid'"):
        Trainer(TINY.replace(init_from=str(base), ip_adapter=True, ip_tokens="grid", side_from=str(adapter)),
                tmp_path / "x", log=quiet)


def test_an_objects_adapter_reads_a_slot_per_object_and_keeps_its_kind(base, adapter, tmp_path):
    slots = fit_adapter(base, tmp_path / "slots", ip_tokens="objects")
    config = load_package(slots).model.config
    assert config.grid and config.num_tokens == 5 and config.image_encoder == "shapes-slots"
    assert assert_it_steers_the_pipeline(base, slots).ip_adapter[2].grid_tokens == 5
    more = Trainer(TINY.replace(max_steps=3, init_from=str(base), ip_adapter=True, ip_tokens="objects",
                                side_from=str(slots)), tmp_path / "more", log=quiet)
    assert more.unwrapped.adapter.config == config                                      # goes on from it
    for tokens, kind in (("grid", "objects"), ("objects", "pooled")):
        with pytest.raises(ValueError, match=f"reads {kind} image features; this run asks for ip_tokens='{tokens}'"):
            Trainer(TINY.replace(init_from=str(base), ip_adapter=True, ip_tokens=tokens,
                                 side_from=str(slots if kind == "objects" else adapter)), tmp_path / "x", log=quiet)


def test_an_own_query_adapter_trains_its_query_and_keeps_its_kind(base, adapter, tmp_path):
    from difflab.models.ip_adapter import IPAdapter
    own = fit_adapter(base, tmp_path / "own", ip_tokens="grid", ip_query="own")
    model = load_package(own).model
    assert model.config.own_query and model.config.grid
    unet = load_package(base).model
    fresh = IPAdapter.from_unet(unet, model.config.feature_dim, num_tokens=16, grid=True, own_query=True).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in model.state_dict().items() if k.startswith("to_q_ip."))
    weights = load_file(next((own.parent / "checkpoints").iterdir()) / "model.safetensors")
    assert all(torch.equal(weights[f"unet.{k}"], v) for k, v in load_file(base / "model.safetensors").items())
    assert_configs_refused([(dict(ip_query="own"), "own with ip_adapter"),
                            (dict(ip_adapter=True, init_from=str(base), ip_query="mine"), "shared or own")])
    with pytest.raises(ValueError, match="has the shared image query; this run asks for ip_query='own'"):
        Trainer(TINY.replace(init_from=str(base), ip_adapter=True, ip_query="own", side_from=str(adapter)),
                tmp_path / "x", log=quiet)


def test_a_same_image_fraction_feeds_the_training_image_itself(base):
    from difflab.models.image_encoders import image_encoder
    from difflab.train.batches import TrainingData
    from difflab.train.image_prompt import ReferenceFeatures
    from difflab.train.ip_pairs import reference_image
    encoder = image_encoder("shapes-objects", grid=True)
    feeds = {}
    for fraction in (0.0, 0.5, 1.0):
        config = TINY.replace(init_from=str(base), ip_adapter=True, ip_tokens="grid", ip_same_image=fraction)
        feeds[fraction] = ReferenceFeatures(config, TrainingData(config), encoder)
    positions = list(range(40))
    for position in positions:
        index, dropped, same = feeds[1.0].choice(position)
        item = feeds[1.0].data.dataset[index]
        own, other = encoder(item["image"])[0], encoder(reference_image(item, TINY.resolution, TINY.seed, index))[0]
        expected = {0.0: other, 1.0: own}
        for fraction in (0.0, 1.0):
            got = feeds[fraction].item(position)
            assert torch.equal(got, torch.zeros_like(own) if dropped else expected[fraction])
        assert feeds[0.0].choice(position)[:2] == (index, dropped)          # the same dropout whatever the fraction
    same = [feeds[0.5].choice(p)[2] for p in range(400)]
    assert 0.4 < sum(same) / len(same) < 0.6
    assert not torch.equal(own, other)                                      # another render: other features
    assert_configs_refused([(dict(init_from=str(base), ip_adapter=True, ip_same_image=value), "ip_same_image")
                            for value in (-0.1, 1.5, True)] + [(dict(ip_same_image=0.5), "non-zero with ip_adapter")])


def test_the_bundled_ip_adapter_carries_the_reference_colour():
    from difflab.metrics.adherence import check
    from difflab.settings import BUNDLED_MODELS
    assert (BUNDLED_MODELS["shapes-ip"] / "MODEL_CARD.md").is_file()
    seeds = list(range(8))
    reference = render("a red square", 3)
    steered = difflab.Pipeline.from_pretrained("shapes-v1", ip_adapter="shapes-ip")(["a circle"] * 8, seed=seeds,
                                                                                 ip_image=reference).images
    plain = difflab.Pipeline.from_pretrained("shapes-v1")(["a circle"] * 8, seed=seeds).images
    red = [sum(any("red" in o for o in check(im.convert("RGB"), "a circle")["objects"]) for im in images)
           for images in (steered, plain)]
    assert red[0] >= 6 and red[1] <= 2, red        # the text leaves the colour free; the image says red
    with pytest.raises(ValueError, match="is an IP-Adapter for shapes-v1, not a model"):
        difflab.Pipeline.from_pretrained("shapes-ip")


def test_the_bundled_objects_adapter_runs_on_the_default_model_at_its_own_scale():
    from difflab.metrics.adherence import check
    from difflab.settings import BUNDLED_MODELS, DEFAULT_MODEL
    assert (BUNDLED_MODELS["shapes-v2.1-ip"] / "MODEL_CARD.md").is_file()
    pipe = difflab.Pipeline.from_pretrained(ip_adapter="shapes-v2.1-ip")           # its base: the default model
    assert Path(pipe.folder) == BUNDLED_MODELS[DEFAULT_MODEL] and pipe.ip_scale_default == 1.5
    words, seeds = "two green crosses", list(range(6))
    steered = pipe([""] * 6, seed=seeds, ip_image=render(words, 5), steps=20).images
    assert steered[0].size == (64, 64)
    plain = pipe([""] * 6, seed=seeds, steps=20).images
    found = [sum(check(im.convert("RGB"), words)["ok"] for im in images) for images in (steered, plain)]
    assert found[0] >= 4 and found[1] == 0, found                   # the image alone: its objects, its count


def test_a_scene_teacher_targets_the_frozen_model_given_the_pinned_prompt(base, tmp_path):
    from difflab.train.image_prompt import SceneTeacher
    from difflab.train.ip_pairs import pinned_prompt
    from difflab.train.objectives.denoising import diffusion_loss
    trainer = Trainer(TINY.replace(max_steps=2, init_from=str(base), ip_adapter=True, ip_teacher=True, lr=1e-2,
                                   lr_warmup=0, ema_decay=0.0, ema_warmup=False, checkpoint_every=0), tmp_path / "t",
                      log=quiet)
    teacher = trainer.objective.teacher
    assert isinstance(teacher, SceneTeacher) and teacher.unet is trainer.unwrapped.unet
    positions = list(range(40))
    chosen = [trainer.controls.choice(p) for p in positions]
    assert any(dropped for _, dropped, _ in chosen) and not all(dropped for _, dropped, _ in chosen)
    own = [f"own text {p}" for p in positions]
    prompts = teacher.prompts(positions, own)
    for (index, dropped, _), prompt, mine in zip(chosen, prompts, own):
        assert prompt == (mine if dropped else pinned_prompt(trainer.data.dataset[index]))
    # the target is the frozen UNet (no image branch) given those prompts
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([100.0, 400.0, 700.0, 950.0])
    with torch.no_grad():
        expected = trainer.unwrapped.unet(x, t, **trainer.conditioner(prompts[:4], "cpu"))
    assert torch.equal(teacher(x, t, positions[:4], own[:4]), expected)
    # a model equal to its teacher has zero loss: the teacher's output replaces the noise target
    unet, cond = trainer.unwrapped.unet, trainer.conditioner(["a red circle"] * 4, "cpu")
    same = diffusion_loss(unet, torch.randn(4, 3, 16, 16), cond, t, torch.randn(4, 3, 16, 16), trainer.schedule,
                          "v_prediction", teacher=lambda x_in, t_in: unet(x_in, t_in, **cond))
    assert same.item() == 0.0
    package = trainer.fit()
    assert load_package(package).metadata["training"]["ip_teacher"] is True
    with pytest.raises(ValueError, match="ip_teacher"):
        TINY.replace(ip_teacher=True)
