"""Video diffusion: the VideoUNet (identity at initialisation, grown from an image UNet, frames mixed
once trained), training on moving shapes (loss falls, exact resume after SIGKILL), batch-invariant
seeds, MP4/GIF files that PyAV and Pillow open with their recipe, and recipe replay."""

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

import difflab
import difflab.data.shapes
import difflab.settings
from difflab.models import create_model
from difflab.train import Trainer, build_config
from test_train import assert_resume_is_exact, cli, held_out_loss

SPATIAL = dict(in_channels=3, out_channels=3, channels=(16, 32), layers_per_block=1, attention_levels=(1,),
               head_dim=16, norm_groups=8, mid_attention=False, context_dim=384, pooled_dim=384)
TINY_VIDEO = """dataset = "moving-shapes"
resolution = 16
batch_size = 4
lr = 1e-3
lr_warmup = 2
ema_decay = 0.9
threads = 1
[model]
class_name = "VideoUNet"
channels = [16, 32]
layers_per_block = 1
attention_levels = [1]
head_dim = 16
norm_groups = 8
mid_attention = false
temporal_head_dim = 16
"""


def randomised(model):
    """Every zero-initialised tensor (output layers) given small random values, so frames differ."""
    torch.manual_seed(1)
    for p in model.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("conditioned", [False, True])
def test_a_new_video_unet_is_its_image_unet_on_every_frame(conditioned):
    image = randomised(create_model("UNet", **SPATIAL)).eval()
    video = create_model("VideoUNet", **SPATIAL, temporal_conditioning=conditioned).eval()
    missing = video.load_state_dict(image.state_dict(), strict=False).missing_keys
    assert missing and all(video.identity_at_init(k) for k in missing)
    x, t = torch.randn(2, 3, 5, 16, 16), torch.tensor([3.0, 700.0])
    context, pooled = torch.randn(2, 4, 384), torch.randn(2, 384)
    with torch.no_grad():
        out = video(x, t, context=context, pooled=pooled)
        per_frame = torch.stack([image(x[:, :, i], t, context=context, pooled=pooled) for i in range(5)], 2)
    assert out.shape == x.shape
    torch.testing.assert_close(out, per_frame, atol=1e-5, rtol=1e-5)


def test_trained_temporal_layers_carry_one_frame_into_the_others():
    video = randomised(create_model("VideoUNet", **SPATIAL)).eval()
    x, t = torch.randn(1, 3, 6, 16, 16), torch.tensor([300.0])
    changed = x.clone()
    changed[:, :, 0] += 1.0                                               # touch the first frame only
    with torch.no_grad():
        a, b = video(x, t), video(changed, t)
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-4                # later frames see it
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        video(x[:, :, 0], t)


def test_conditioned_temporal_blocks_see_the_prompt_and_the_frame_index():
    from difflab.models.video_unet import TemporalBlock
    plain, seeing = randomised(TemporalBlock(32, 16, 8, True)), TemporalBlock(32, 16, 8, True, emb_dim=24)
    assert seeing.load_state_dict(plain.state_dict(), strict=False).missing_keys == [
        "motion.0.weight", "motion.0.bias", "motion.2.weight", "motion.2.bias"]
    h = torch.randn(1, 32, 4, 4).repeat(6, 1, 1, 1)                      # one clip of 6 identical frames
    emb_a, emb_b = torch.randn(1, 24).repeat(6, 1), torch.randn(1, 24).repeat(6, 1)
    with torch.no_grad():
        torch.testing.assert_close(seeing(h, 6, emb_a), plain(h, 6))     # motion output at zero: the plain block
        torch.nn.init.normal_(seeing.motion[2].weight, std=0.5)
        a, b = seeing(h, 6, emb_a), seeing(h, 6, emb_b)
    assert (a - b).abs().max() > 1e-3                                     # the prompt's embedding steers the motion
    assert ((a - b)[2] - (a - b)[3]).abs().max() > 1e-3                   # and its effect differs from frame to frame
    with pytest.raises(ValueError, match="conditioning embedding"):
        seeing(h, 6)


def test_temporal_text_starts_as_the_identity_and_then_reads_the_tokens():
    """A network grown with ``temporal_text`` from one without computes the same; once its reading has
    weights, changing one token (not the pooled embedding) changes the motion the temporal blocks see."""
    plain = randomised(create_model("VideoUNet", **SPATIAL, temporal_conditioning=True)).eval()
    grown = create_model("VideoUNet", **SPATIAL, temporal_conditioning=True, temporal_text=True).eval()
    missing = grown.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("temporal_text.") and grown.identity_at_init(k) for k in missing)
    x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([900.0, 900.0])
    context, pooled, mask = torch.randn(2, 5, 384), torch.randn(2, 384), torch.tensor([[1, 1, 1, 1, 0]] * 2).bool()
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, context=context, context_mask=mask, pooled=pooled),
                                   plain(x, t, context=context, context_mask=mask, pooled=pooled))
        torch.nn.init.normal_(grown.temporal_text.attn.to_out.weight, std=0.5)
        assert (grown(x, t, context=context, context_mask=mask, pooled=pooled)
                - plain(x, t, context=context, context_mask=mask, pooled=pooled)).abs().max() > 1e-4
        reading = grown.temporal_text
        emb = torch.randn(2, grown.config.embed_dim)
        other, padding = context.clone(), context.clone()
        other[:, 2] += 1.0                                                # one token changed, same pooled
        padding[:, 4] += 1.0                                              # a padding token changed
        a, b, c = (reading(emb, ctx, mask) for ctx in (context, other, padding))
    assert (a - b).abs().max() > 1e-3                                     # the reading sees each token
    torch.testing.assert_close(a, c)                                      # and never the padding
    torch.testing.assert_close(reading(emb, None, None), emb)             # no prompt: nothing added
    with pytest.raises(ValueError, match="temporal_text needs temporal_conditioning"):
        create_model("VideoUNet", **SPATIAL, temporal_text=True)


def trained_video_package(tmp_path, config_text: str, class_name: str):
    """30 steps of a tiny video model from ``config_text`` (TOML): its held-out loss must fall, and its
    package must say it makes 8-frame clips with ``class_name``. Returns the package folder."""
    config_file = tmp_path / "video.toml"
    config_file.write_text(config_text)
    config = build_config(None, str(config_file), {"max_steps": 30, "checkpoint_every": 0})
    trainer = Trainer(config, tmp_path / "run", log=lambda *a: None)
    positions = list(range(10_000, 10_008))
    before = held_out_loss(trainer, positions)
    package = trainer.fit()
    assert held_out_loss(trainer, positions) < before
    header = json.loads((package / "config.json").read_text())
    assert header["codec"] == {"type": "video", "frames": 8} and header["class_name"] == class_name
    return package


def test_video_training_learns_and_the_package_generates_clips_with_recipes(tmp_path):
    pipe = difflab.Pipeline.from_pretrained(trained_video_package(tmp_path, TINY_VIDEO, "VideoUNet"))
    prompts = ["a red circle moving right", "a blue square falling"]
    batch = pipe(prompts, seed=[5, 6], steps=4)
    single = pipe(prompts[1], seed=6, steps=4)
    assert batch.videos[0].shape == (8, 16, 16, 3) and batch.videos[0].dtype == np.uint8
    assert np.array_equal(batch.videos[1], single.videos[0])              # a batch of N equals N single runs
    assert batch.images[0].size == (8 * 16, 16)                           # the filmstrip

    mp4, gif = batch.save(tmp_path / "out")[0], batch.save(tmp_path / "out", video_format="gif")[0]
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        stored = json.loads(container.metadata["comment"])
    assert len(frames) == 8 and frames[0].shape == (16, 16, 3) and stored == batch.recipes[0]
    assert np.abs(np.stack(frames).astype(int) - batch.videos[0]).mean() < 12   # H.264 at crf 10, 4:2:0 chroma
    with Image.open(gif) as image:
        assert image.n_frames == 8 and json.loads(image.info["comment"]) == batch.recipes[0]
    replayed = pipe.replay(difflab.pipelines.read_recipe(mp4))
    assert np.array_equal(replayed.videos[0], batch.videos[0])
    with pytest.raises(ValueError, match="first frame only"):
        pipe(prompts[0], image=Image.new("RGB", (16, 16)), strength=0.5)

    # image-to-video: the given image is the first frame, exactly; the recipe replays with it
    first = difflab.data.shapes.render("a red circle", seed=1, resolution=16)
    animated = pipe(prompts[0], image=first, seed=9, steps=4)
    assert np.array_equal(animated.videos[0][0], np.asarray(first))
    assert animated.recipes[0]["first_frame"] is True
    again = pipe.replay(animated.recipes[0], image=first)
    assert np.array_equal(again.videos[0], animated.videos[0])


def test_video_training_resumes_exactly_after_sigkill(tmp_path):
    config_file = tmp_path / "video.toml"
    config_file.write_text(TINY_VIDEO.replace("batch_size = 4", "batch_size = 2"))
    assert_resume_is_exact(["train", "--config", str(config_file), "--max-steps", "6", "--checkpoint-every", "2"],
                           tmp_path)


def test_generate_writes_an_mp4_and_replays_its_recipe(tmp_path):
    config_file = tmp_path / "video.toml"
    config_file.write_text(TINY_VIDEO)
    package = Trainer(build_config(None, str(config_file), {"max_steps": 1, "checkpoint_every": 0}),
                      tmp_path / "run", log=lambda *a: None).fit()
    made = cli("generate", "a green triangle bouncing", "--model", str(package), "--steps", "3", "--seed", "2",
               "--out", str(tmp_path / "clips"))
    assert made.returncode == 0, made.stderr[-2000:]
    path = tmp_path / "clips" / "image-2-000.mp4"
    assert made.stdout.strip().splitlines()[-1] == str(path)
    again = cli("generate", "--recipe", str(path), "--model", str(package), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-2000:]
    with av.open(str(path)) as a, av.open(again.stdout.strip().splitlines()[-1]) as b:
        assert [f.to_ndarray().tobytes() for f in a.decode(video=0)] == [f.to_ndarray().tobytes() for f in b.decode(video=0)]
    bad = cli("generate", "a red circle moving right", "--model", str(package), "--video-format", "avi")
    assert bad.returncode != 0 and "--video-format must be mp4 or gif" in bad.stderr
    # difflab eval judges a video model with the motion judge: both prompt sets, real ceilings, FD/KID
    judged = cli("eval", str(package), "--limit", "2", "--steps", "2", "--out", str(tmp_path / "report.json"))
    assert judged.returncode == 0, judged.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["media"] == "video" and report["prompts"] == "held-out+test"
    assert set(report["rows"]) == {"held-out", "held-out (real)", "test", "test (real)"}
    assert report["rows"]["test (real)"]["overall"] == 1.0 and len(report["results"]) == 4
    assert all(isinstance(row["FD"], float) for row in report["rows"].values())
    assert "| held-out (2) |" in judged.stdout and "not FVD" in judged.stdout
    one = cli("eval", str(package), "--prompts", "held-out", "--limit", "1", "--steps", "2",
              "--out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr[-2000:]
    rows = json.loads((tmp_path / "one.json").read_text())["rows"]
    assert set(rows) == {"held-out", "held-out (real)"} and "FD" not in rows["held-out"]   # one clip: no covariance
    (tmp_path / "mine.txt").write_text("a red circle\n")
    wrong = cli("eval", str(package), "--prompts", str(tmp_path / "mine.txt"), "--limit", "1")
    assert wrong.returncode == 2 and "--prompts takes held-out or test" in wrong.stderr


def test_the_bundled_video_model_loads_by_name_and_makes_a_clip():
    pipe = difflab.Pipeline.from_pretrained("shapes-video")
    result = pipe("a red circle moving right", seed=0, steps=2)
    assert result.videos[0].shape == (8, 32, 32, 3) and pipe.codec.frames == 8
    assert (difflab.settings.BUNDLED_MODELS["shapes-video"] / "MODEL_CARD.md").is_file()


def test_train_only_temporal_keeps_every_image_weight(tmp_path):
    config_file = tmp_path / "video.toml"
    config_file.write_text(TINY_VIDEO)
    base = Trainer(build_config(None, str(config_file), {"max_steps": 2, "checkpoint_every": 0}), tmp_path / "base",
                   log=lambda *a: None).fit()                              # a package whose output layer is not zero
    config = build_config(None, str(config_file), {"max_steps": 3, "checkpoint_every": 0, "train_only": "temporal",
                                                   "init_from": str(base)})
    trainer = Trainer(config, tmp_path / "run", log=lambda *a: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for _ in range(3):
        trainer.train_step()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("temporal.") for k in changed)
    with pytest.raises(ValueError, match="names no weight"):
        Trainer(config.replace(train_only="motion"), tmp_path / "run2", log=lambda *a: None)

    # grown with conditioned temporal blocks from the plain video package: the new layers train too
    grown = build_config(None, str(config_file), {"max_steps": 3, "checkpoint_every": 0, "train_only": "temporal",
                                                  "init_from": str(base)})
    grown = grown.replace(model={**grown.model, "temporal_conditioning": True})
    trainer = Trainer(grown, tmp_path / "grown", log=lambda *a: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    package = trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".motion." in k for k in changed) and all(k.startswith("temporal.") for k in changed)
    pipe = difflab.Pipeline.from_pretrained(package)                      # strict load of the grown network
    assert pipe.model.config.temporal_conditioning and pipe("a red circle moving left", steps=2).videos[0].shape[0] == 8
    with pytest.raises(ValueError, match="train_only"):
        config.replace(lora_rank=4)
    with pytest.raises(ValueError, match="used with init_from"):
        config.replace(init_from=None)


def test_an_empty_path_unsets_what_the_preset_set(tmp_path):
    from difflab.train import TrainConfig
    assert build_config("shapes-video", None, {}).init_from == "shapes-v1"
    assert build_config("shapes-video", None, {"init_from": ""}).init_from is None     # --init-from ""
    config_file = tmp_path / "scratch.toml"
    config_file.write_text('init_from = ""\n')
    assert build_config("shapes-video", str(config_file), {}).init_from is None
    assert build_config("shapes-video", str(config_file), {"init_from": "shapes"}).init_from == "shapes"  # flags win
    with pytest.raises(ValueError, match="init_from must be a model package folder or None"):
        TrainConfig(init_from="")
