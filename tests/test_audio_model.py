"""Audio diffusion on log-mel spectrograms: training on the sounds world (loss falls, exact resume
after SIGKILL), batch-invariant seeds, WAV files that soundfile opens at the right rate and length
with their recipe, and recipe replay from the WAV alone."""

import json

import numpy as np
import soundfile

import difflab
import difflab.settings
from difflab.data import spectrogram
from difflab.train import Trainer, build_config
from test_train import assert_resume_is_exact, held_out_loss

TINY_SOUNDS = """dataset = "sounds"
resolution = 64
batch_size = 4
lr = 1e-3
lr_warmup = 2
ema_decay = 0.9
threads = 1
[model]
channels = [16, 32]
layers_per_block = 1
attention_levels = [1]
head_dim = 16
norm_groups = 8
mid_attention = false
"""


def tiny_config(tmp_path, **overrides):
    path = tmp_path / "sounds.toml"
    path.write_text(TINY_SOUNDS)
    return build_config(None, str(path), overrides), path


def test_audio_training_learns_and_the_package_writes_wavs_that_replay(tmp_path):
    config, _ = tiny_config(tmp_path, max_steps=30, checkpoint_every=0)
    trainer = Trainer(config, tmp_path / "run", log=lambda *a: None)
    positions = list(range(10_000, 10_008))
    before = held_out_loss(trainer, positions)
    package = trainer.fit()
    assert held_out_loss(trainer, positions) < before
    assert json.loads((package / "config.json").read_text())["codec"] == {"type": "audio"}

    pipe = difflab.Pipeline.from_pretrained(package)
    prompts = ["a low note then a high note", "three short clicks"]
    batch = pipe(prompts, seed=[3, 4], steps=4)
    single = pipe(prompts[1], seed=4, steps=4)
    assert batch.sample_rate == spectrogram.SAMPLE_RATE
    assert batch.audio[0].shape == (spectrogram.CLIP_SAMPLES,) and np.isfinite(batch.audio[0]).all()
    assert np.array_equal(batch.audio[1], single.audio[0])               # a batch of N equals N single runs
    assert batch.images[0].size == (spectrogram.FRAMES, spectrogram.N_MELS)   # the spectrogram, as an image

    path = batch.save(tmp_path / "out")[0]
    with soundfile.SoundFile(path) as sound:
        assert (sound.samplerate, sound.frames, sound.channels) == (spectrogram.SAMPLE_RATE, spectrogram.CLIP_SAMPLES, 1)
        assert json.loads(sound.comment) == batch.recipes[0]
        written = sound.read(dtype="float32")
    assert np.abs(written - np.clip(batch.audio[0], -1, 1)).max() <= 1 / 32767 + 1e-6   # 16-bit PCM
    replayed = pipe.replay(difflab.pipelines.read_recipe(path))
    assert np.array_equal(replayed.audio[0], batch.audio[0])


def test_audio_training_resumes_exactly_after_sigkill(tmp_path):
    _, path = tiny_config(tmp_path)
    path.write_text(TINY_SOUNDS.replace("batch_size = 4", "batch_size = 2"))
    assert_resume_is_exact(["train", "--config", str(path), "--max-steps", "6", "--checkpoint-every", "2"], tmp_path)


def test_the_bundled_sounds_model_loads_by_name_and_makes_a_sound():
    pipe = difflab.Pipeline.from_pretrained("sounds")
    result = pipe("a low note then a high note", seed=0, steps=2)
    assert result.audio[0].shape == (spectrogram.CLIP_SAMPLES,) and np.isfinite(result.audio[0]).all()
    assert (difflab.settings.BUNDLED_MODELS["sounds"] / "MODEL_CARD.md").is_file()
