"""The seams of issue 11: the conditioner (shared, batch-invariant, thread-safe), the codec (shapes,
masks, size multiples from the network's own property) and a Pipeline built from its parts."""

import threading

import pytest
import torch
from PIL import Image

import difflab
from difflab.codecs import Codec, PixelCodec
from difflab.conditioning import ConditionSource, Conditioner
from difflab.models import DiT
from difflab.models.text import ClassLabelEncoder


class CountingEncoder:
    """A text encoder whose embedding is a function of the prompt alone; counts its calls."""

    dim, spec = 4, {"type": "counting"}

    def __init__(self):
        self.calls, self.active, self.overlaps = 0, 0, 0

    def encode(self, prompts):
        self.active += 1
        self.overlaps += self.active > 1
        self.calls += 1
        codes = torch.tensor([[float(len(p)), float(sum(map(ord, p)) % 97), 1.0, 0.0] for p in prompts])
        self.active -= 1
        return codes[:, None], torch.ones(len(prompts), 1, dtype=torch.bool), codes


def test_a_conditioned_batch_equals_single_calls_and_null_is_empty_text():
    conditioner = Conditioner(CountingEncoder())
    batch = conditioner(["a red circle", "", "two squares"])
    for i, prompt in enumerate(["a red circle", "", "two squares"]):
        single = conditioner([prompt])
        for key in ("context", "context_mask", "pooled"):
            assert torch.equal(batch[key][i], single[key][0])
    assert conditioner.null == "" and conditioner.dropped(["a", "b"], [True, False]) == ["", "b"]


def test_class_labels_use_the_encoders_null_label():
    conditioner = Conditioner(ClassLabelEncoder([str(d) for d in range(10)]))
    assert conditioner.class_labels and conditioner.null is None
    assert conditioner([3, None, "", "7"])["class_labels"].tolist() == [3, 10, 10, 7]


def test_the_conditioner_is_safe_from_several_threads():
    encoder = CountingEncoder()
    conditioner = Conditioner(encoder)
    expected = Conditioner(CountingEncoder())(["p0", "p1", "p2"])["pooled"]
    before = torch.get_num_threads()
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(conditioner(["p0", "p1", "p2"])["pooled"])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and encoder.overlaps == 0
    assert all(torch.equal(r, expected) for r in results)
    assert torch.get_num_threads() == before  # no process-wide setting changed inside a call


def test_extra_condition_sources_plug_in_by_keyword():
    class SizeIds(ConditionSource):
        name = "size_ids"

        def __call__(self, values, device):
            return {"size_ids": torch.tensor(values, device=device)}

    conditioner = Conditioner(CountingEncoder(), extra=[SizeIds()])
    kwargs = conditioner(["a"], size_ids=[[32, 32]])
    assert kwargs["size_ids"].tolist() == [[32, 32]] and "context" in kwargs
    with pytest.raises(ValueError, match="no control_images conditioning"):
        conditioner(["a"], control_images=[None])


def test_pixel_codec_shapes_and_masks():
    codec = PixelCodec(3)
    assert codec.model_shape(2, 48, 32) == (2, 3, 32, 48)
    mask = torch.rand(1, 1, 8, 8)
    assert codec.downsample_mask(mask) is mask
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(x)), x)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        PixelCodec(4)


def test_a_downsampling_codec_keeps_a_cell_when_none_of_its_pixels_is_masked():
    class Halving(Codec):
        channels, latent_channels, downsampling = 3, 4, 2

    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1.0
    small = Halving().downsample_mask(mask)
    assert small.shape == (1, 1, 2, 2) and small.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    assert Halving().model_shape(1, 8, 4) == (1, 4, 2, 4)
    assert Halving().size_multiple(4) == 8


def test_a_dit_pipeline_takes_its_patch_size_as_the_size_multiple():
    torch.manual_seed(0)
    model = DiT(in_channels=3, patch_size=4, hidden_size=32, depth=1, num_heads=1, num_classes=10).eval()
    pipe = difflab.Pipeline(model, difflab.NoiseSchedule.cosine(), "v_prediction",
                            ClassLabelEncoder([str(d) for d in range(10)]), PixelCodec(3), resolution=16)
    assert pipe.size_multiple == 4
    result = pipe(3, num_images=2, seed=0, steps=2, guidance_scale=1.0)
    assert [im.size for im in result.images] == [(16, 16), (16, 16)]
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe(3, image=Image.new("RGB", (18, 16)), strength=0.5, steps=2)


def test_the_trainer_builds_its_pipeline_through_the_public_constructor(tmp_path):
    from difflab.train import Trainer, preset

    trainer = Trainer(preset("tiny").replace(max_steps=1, checkpoint_every=0), tmp_path, log=lambda *a: None)
    pipe = trainer.pipeline()
    assert isinstance(pipe, difflab.Pipeline) and pipe.conditioner is trainer.conditioner
    assert not hasattr(difflab.Pipeline, "from_trainer")
    assert pipe("a red circle", steps=2).images[0].size == (16, 16)


def test_the_trainer_builds_any_registered_network_and_trains_edm(tmp_path):
    from difflab.train import Trainer, preset

    dit = dict(class_name="DiT", patch_size=4, hidden_size=32, depth=1, num_heads=1)
    config = preset("tiny").replace(max_steps=2, checkpoint_every=0, model=dit, prediction_type="edm",
                                    schedule="scaled_linear", rescale_zero_terminal_snr=False)
    trainer = Trainer(config, tmp_path, log=lambda *a: None)
    assert type(trainer.unwrapped).__name__ == "DiT"
    assert trainer.objective.parameterization.name == "edm"
    folder = trainer.fit()
    pipe = difflab.Pipeline.from_pretrained(folder)
    assert pipe.size_multiple == 4 and pipe("a red circle", steps=2).images[0].size == (16, 16)


def test_a_pixel_pipeline_has_no_vae():
    pipe = difflab.Pipeline(torch.nn.Identity(), difflab.NoiseSchedule.cosine(), "v_prediction", CountingEncoder())
    assert pipe.vae is None and isinstance(pipe.codec, PixelCodec) and pipe.channels == 3
