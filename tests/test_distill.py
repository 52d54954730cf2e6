"""Distillation (``difflab distill --method lcm|cd|reflow``) on a tiny teacher: the consistency function
meets its boundary condition exactly, a student starts as its teacher, each objective's loss falls,
reflow's couplings replay from their seeds, students load strictly and replay their recipes, an
LCM-LoRA alone gives its merged student's images, a run resumes exactly, bad input is refused."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import difflab
from difflab.denoisers import Denoiser
from difflab.parameterization import LatentConsistency, get_parameterization
from difflab.schedules import NoiseSchedule
from difflab.train import Trainer, preset
from difflab.train.couplings import Couplings, coupling_noise
from difflab.train.distill import distill_config, student_sampling
from difflab.train.objectives.reconstruction import objects_distance
from difflab.train.optim import ema_update
from test_train import assert_resume_is_exact, cli

TINY = preset("tiny").replace(threads=1)
SMALL = dict(batch_size=4, threads=1, couplings=8, teacher_steps=2, checkpoint_every=0, lr_warmup=0)
quiet = lambda *a: None


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return Trainer(TINY.replace(max_steps=6, checkpoint_every=0), tmp_path_factory.mktemp("teacher") / "run",
                   log=quiet).fit()


def test_the_consistency_function_meets_its_boundary_condition_exactly():
    schedule = NoiseSchedule.cosine(rescale_zero_terminal_snr=True)
    lcm = LatentConsistency("v_prediction", sigma_min=schedule.sigma_min)
    alpha, sigma_t = schedule.alpha_sigma(schedule.sigma(torch.tensor([0.0, 0.0])))
    b_skip, b_out = lcm.boundary(alpha, sigma_t)
    assert b_skip.tolist() == [1.0, 1.0] and b_out.tolist() == [0.0, 0.0]
    wild = lambda x, t, **cond: 100 * torch.randn_like(x)           # whatever the network says
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(Denoiser(wild, schedule, lcm)(x, schedule.sigma(0)), x, rtol=0, atol=1e-6)
    # away from the boundary it is the base's x0 (the student starts as its teacher); exactly so at pure noise
    fixed = lambda x, t, **cond: torch.ones_like(x)
    base = Denoiser(fixed, schedule, "v_prediction")
    student = Denoiser(fixed, schedule, get_parameterization(json.loads(json.dumps(lcm.to_config()))))
    for t in (50, 500, 990):
        sigma = schedule.sigma(t)
        assert torch.allclose(student(x, sigma), base(x, sigma), atol=1e-3 * (1 + float(sigma)))
    z = torch.randn(2, 3, 8, 8)
    assert torch.equal(student(z, float("inf")), base(z, float("inf")))
    with pytest.raises(ValueError, match="native parameterization"):
        LatentConsistency("edm")


def test_an_lcm_student_starts_as_its_teacher_whatever_the_scale(teacher, tmp_path):
    trainer = Trainer(distill_config("lcm", str(teacher), {**SMALL, "max_steps": 1}), tmp_path / "run", log=quiet)
    student, master = trainer.unwrapped, trainer.teacher.model
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 700.0])
    cond = trainer.conditioner(["a red circle", "two blue squares"], "cpu")
    with torch.no_grad():
        for w in (1.0, 4.0):
            assert torch.allclose(student(x, t, **cond, guidance=torch.full((2,), w)), master(x, t, **cond), atol=1e-6)
    with pytest.raises(ValueError, match="pass guidance=w"):
        student(x, t, **cond)


def fixed_batch_losses(trainer, steps: int) -> list[float]:
    """Losses of ``steps`` optimiser steps on one fixed batch (the target follows the EMA)."""
    losses = []
    for _ in range(steps):
        loss = trainer.micro_loss([0, 1, 2, 3])
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        ema_update(trainer.ema, trainer.unwrapped, trainer.config.ema_decay)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ["lcm", "cd", "reflow"])
def test_each_objective_loss_falls(teacher, tmp_path, method):
    config = distill_config(method, str(teacher), {**SMALL, "lr": 2e-3, "distance": "l2"})
    losses = fixed_batch_losses(Trainer(config, tmp_path / "run", log=quiet), 25)
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses


def test_reflow_couplings_replay_from_their_seeds(teacher, tmp_path):
    trainer = Trainer(distill_config("reflow", str(teacher), {**SMALL, "max_steps": 1, "couplings": 6}),
                      tmp_path / "run", log=quiet)
    made = trainer.coupled.couplings
    again = Couplings(tmp_path / "again", made.count, made.recipe)
    solve = trainer.teacher.solver(trainer.conditioner, 3.0, 2, "cpu")
    for rank in (1, 0):                                  # two processes' shares, made in the other order
        again.generate(solve, trainer.data, process_index=rank, num_processes=2, log=quiet)
    for i in range(6):
        z, x1, caption = made.pair(i)
        assert torch.equal(z, coupling_noise(0, i, tuple(z.shape))) and caption == trainer.data.item(i)[1]
        z2, x2, caption2 = again.pair(i)
        assert torch.equal(z, z2) and torch.equal(x1, x2) and caption == caption2
    alone = solve(made.pair(4)[0][None], [made.pair(4)[2]])[0]  # a batch of one gives pair 4 of the batch of six
    assert torch.allclose(alone, made.pair(4)[1], atol=1e-5)
    other = Couplings(tmp_path / "run" / "couplings", 6, {**made.recipe, "guidance": 7.0})
    with pytest.raises(ValueError, match="another recipe"):
        other.load()


def test_a_larger_count_extends_the_couplings_it_finds(teacher, tmp_path, monkeypatch):
    # pair i does not depend on the count: a larger --couplings keeps the whole shards and makes the rest
    monkeypatch.setattr("difflab.train.couplings.SHARD", 4)
    trainer = Trainer(distill_config("reflow", str(teacher), {**SMALL, "max_steps": 1, "couplings": 6}),
                      tmp_path / "run", log=quiet)
    small, solve = trainer.coupled.couplings, trainer.teacher.solver(trainer.conditioner, 3.0, 2, "cpu")
    assert small.shards == 2 and small.missing() == []
    first = small.shard_path(0).stat().st_mtime_ns
    larger = Couplings(small.folder, 10, {**small.recipe, "count": 10})   # shards of old runs carry a count
    assert larger.missing() == [1, 2]                 # shard 1 holds 2 of its 4 pairs at count 10
    (tmp_path / "linked").mkdir()                      # a hard-linked copy (cp -al) in another run keeps its shard
    os.link(small.shard_path(1), tmp_path / "linked" / small.shard_path(1).name)
    said = []
    larger.generate(solve, trainer.data, log=said.append)
    assert said[0].startswith("generating 6 teacher couplings in 2 shard(s)") and "4 found" in said[0], said
    with safe_open(str(tmp_path / "linked" / small.shard_path(1).name), "pt") as f:
        assert f.get_slice("z").get_shape()[0] == 2
    assert larger.missing() == [] and larger.shard_path(0).stat().st_mtime_ns == first
    alone = Couplings(tmp_path / "alone", 10, small.recipe)
    alone.generate(solve, trainer.data, log=quiet)
    for i in range(10):
        assert all(torch.equal(a, b) for a, b in zip(larger.pair(i)[:2], alone.pair(i)[:2]))
        assert larger.pair(i)[2] == alone.pair(i)[2]
        if i < 6:
            assert torch.equal(larger.pair(i)[1], small.pair(i)[1])


def test_one_step_reflow_fits_the_couplings_map_at_pure_noise(teacher, tmp_path):
    # Liu et al. (2022, Sec. 2.3): every sample at t = T, where the flow input is the pair's noise z and
    # one Euler step gives z - v(z, T); the loss is that one-step image's squared error against x1
    config = distill_config("reflow", str(teacher), {**SMALL, "timestep_sampling": "terminal", "lr": 2e-3})
    trainer = Trainer(config, tmp_path / "run", log=quiet)
    x1, captions, z = trainer.coupled.batch([0, 1, 2, 3])
    with torch.no_grad():
        v = trainer.model(z, torch.full((4,), 1000.0), **trainer.conditioner(captions, "cpu"))
        assert torch.allclose(trainer.micro_loss([0, 1, 2, 3]), ((z - v) - x1).pow(2).mean(), rtol=1e-5)
    trainer.objective.distance = "l1"   # --distance l1: the one-step image's mean absolute error
    with torch.no_grad():
        assert torch.allclose(trainer.micro_loss([0, 1, 2, 3]), ((z - v) - x1).abs().mean(), rtol=1e-5)
    losses = fixed_batch_losses(trainer, 25)
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    assert student_sampling(config)["steps"] == 1
    assert distill_config("reflow", str(teacher), {**SMALL, "distance": "l1"}).distance == "l1"
    with pytest.raises(ValueError, match="l2 or l1 for distill=reflow"):
        distill_config("reflow", str(teacher), {**SMALL, "distance": "huber"})
    for method in ("cd", "lcm"):   # the other objectives draw their own timesteps: refused, not ignored
        with pytest.raises(ValueError, match="terminal"):
            distill_config(method, str(teacher), {**SMALL, "timestep_sampling": "terminal"})


def test_one_step_reflow_adds_the_perceptual_distance_of_its_one_step_image(teacher, tmp_path):
    # InstaFlow's (Liu et al. 2023) one-step loss: a feature distance between the student's image
    # z - v(z, T) and x1, here in the frozen shapes-objects encoder, on top of the pixel distance
    settings = {**SMALL, "timestep_sampling": "terminal", "distance": "l1", "perceptual_weight": 0.5, "lr": 2e-3}
    trainer = Trainer(distill_config("reflow", str(teacher), settings), tmp_path / "run", log=quiet)
    x1, captions, z = trainer.coupled.batch([0, 1, 2, 3])
    with torch.no_grad():
        image = z - trainer.model(z, torch.full((4,), 1000.0), **trainer.conditioner(captions, "cpu"))
        expected = (image - x1).abs().mean() + 0.5 * objects_distance()(image, x1).mean()
        assert torch.allclose(trainer.micro_loss([0, 1, 2, 3]), expected, rtol=1e-5)
        assert objects_distance()(image, x1).mean() > 0.01   # the term is there, not a zero added
    losses = fixed_batch_losses(trainer, 25)
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
    with pytest.raises(ValueError, match="task=vae or distill=reflow"):
        distill_config("cd", str(teacher), {**SMALL, "perceptual_weight": 0.5})


@pytest.mark.parametrize("method,sampler,steps,guidance", [("lcm", "lcm", 4, 2.5), ("reflow", "euler", 4, 1.0)])
def test_students_load_strictly_and_replay_their_recipes(teacher, tmp_path, method, sampler, steps, guidance):
    # every step of a few-step student moves: trailing grids (flow 'linspace' ends on t = 0.001 -> 0)
    result = cli("distill", "--method", method, "--teacher", str(teacher), "--out", str(tmp_path / "run"),
                 "--max-steps", "2", "--batch-size", "4", "--couplings", "4", "--teacher-steps", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "run" / "model"
    pipe = difflab.Pipeline.from_pretrained(folder)
    assert (pipe.defaults["sampler"], pipe.defaults["steps"], pipe.defaults["guidance_scale"]) == (sampler, steps, guidance)
    assert pipe.defaults["spacing"] == "trailing"
    if method == "reflow":
        assert torch.allclose(pipe.schedule.t(pipe.schedule.sigmas(2, "trailing")).double(),
                              torch.tensor([1000.0, 500.0, 0.0], dtype=torch.float64))
    made = pipe(["a red circle", "two blue squares"], seed=5)
    again = pipe.replay(made.recipes[1])
    assert np.array_equal(np.asarray(made.images[1]), np.asarray(again.images[0]))
    assert json.loads((folder / "config.json").read_text())["training"]["distill"] == method
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("time_mlp.0")}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="time_mlp.0"):
        difflab.Pipeline.from_pretrained(folder)


def test_an_lcm_lora_alone_gives_its_merged_students_images(teacher, tmp_path):
    config = distill_config("lcm", str(teacher), {**SMALL, "max_steps": 3, "lora_rank": 4, "lr": 1e-2})
    assert not config.model.get("guidance_embedding") and config.guidance_min == config.teacher_guidance
    merged = Trainer(config, tmp_path / "run", log=quiet).fit()
    student = difflab.Pipeline.from_pretrained(merged)
    assert student.defaults["guidance_scale"] == 1.0 and student.defaults["sampler"] == "lcm"
    reference = student(["a red circle", "two blue squares"], seed=2)
    pipe = difflab.Pipeline.from_pretrained(teacher)
    pipe.load_lora(tmp_path / "run" / "lora" / "adapter.safetensors")
    adapted = pipe(["a red circle", "two blue squares"], seed=2, sampler="lcm", steps=4, spacing="trailing",
                   guidance_scale=1.0)
    for a, b in zip(adapted.images, reference.images):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b)).max() <= 1   # the boundary scalings: below 1/255


def test_an_lcm_run_resumes_exactly(teacher, tmp_path):
    assert_resume_is_exact(["distill", "--method", "lcm", "--teacher", str(teacher), "--max-steps", "6",
                            "--checkpoint-every", "2", "--batch-size", "4", "--threads", "1"], tmp_path)


def test_bad_distill_input_is_refused_in_one_line(teacher, tmp_path):
    for args, message in [(["--method", "magic"], "--method must be one of lcm, cd, reflow"),
                          (["--method", "lcm", "--teacher", str(tmp_path / "none")], "no difflab model package"),
                          (["--method", "cd", "--teacher-guidance", "-1"], "guidance_min <= teacher_guidance"),
                          (["--method", "lcm", "--skip-steps", "0"], "skip_steps must be an integer in")]:
        if "--teacher" not in args:
            args = [*args, "--teacher", str(teacher)]
        result = cli("distill", *args, "--out", str(tmp_path / "out"))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-800:]
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    student = Trainer(distill_config("reflow", str(teacher), {**SMALL, "max_steps": 1, "couplings": 4}),
                      tmp_path / "flow", log=quiet).fit()
    with pytest.raises(ValueError, match="flow model: use --method reflow"):
        distill_config("lcm", str(student), {})


def test_path_straightness_is_zero_exactly_for_straight_paths_and_positive_for_curved_ones():
    from difflab.metrics.straightness import path_straightness
    point = torch.randn(2, 3, 8, 8)           # data on one point: every path is a straight line to it
    s, x1 = path_straightness(lambda x, sigma: point.clone(), torch.randn(2, 3, 8, 8), steps=10)
    assert s < 1e-10 and torch.allclose(x1, point, atol=1e-5)
    var = 0.25                                 # Gaussian data N(0, 0.25 I): x0 = var / (var + sigma^2) x, curved
    gauss = lambda x, sigma: torch.zeros_like(x) if sigma == float("inf") else var / (var + sigma**2) * x
    assert path_straightness(gauss, torch.randn(2, 3, 8, 8), steps=50)[0] > 0.05


def test_two_processes_share_the_couplings_and_train_like_one(teacher, tmp_path):
    import subprocess
    import sys

    from test_train import ENV, weights
    args = ["distill", "--method", "reflow", "--teacher", str(teacher), "--couplings", "300", "--teacher-steps", "2",
            "--batch-size", "4", "--max-steps", "2", "--checkpoint-every", "0", "--threads", "1"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "difflab", *args,
                          "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    for shard in ("pairs-00000.safetensors", "pairs-00001.safetensors"):   # process 0 made one, process 1 the other
        a, b = load_file(tmp_path / "one" / "couplings" / shard), load_file(tmp_path / "two" / "couplings" / shard)
        assert torch.equal(a["z"], b["z"]) and torch.allclose(a["x1"], b["x1"], atol=1e-6)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_the_bundled_fast_student_loads_by_name_and_replays():
    pipe = difflab.Pipeline.from_pretrained("shapes-fast")
    assert (pipe.defaults["sampler"], pipe.defaults["steps"], pipe.model.config.guidance_embedding) == ("lcm", 4, True)
    made = pipe("a red circle above a blue square", seed=3)
    assert made.recipes[0]["model"] == "shapes-fast" and made.recipes[0]["steps"] == 4
    assert np.array_equal(np.asarray(made.images[0]), np.asarray(pipe.replay(made.recipes[0]).images[0]))
    assert (difflab.settings.BUNDLED_MODELS["shapes-fast"] / "MODEL_CARD.md").is_file()
