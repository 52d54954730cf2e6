"""The training loss: targets, min-SNR weights (against diffusers' SNR) and parameterisation invariance."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from difflab.denoisers import Denoiser
from difflab.schedules import NoiseSchedule
from difflab.train.objectives.denoising import diffusion_loss, loss_weights

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow")
T = torch.tensor([0.0, 50, 250, 500, 750, 900, 990])


def test_min_snr_weights_follow_hang_et_al_with_diffusers_snr():
    schedule = NoiseSchedule.scaled_linear()
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    snr = compute_snr(reference, T.long()).double()
    gamma = 5.0
    clamped = torch.minimum(snr, torch.full_like(snr, gamma))
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=0)  # diffusers' SNR is float32
    close(loss_weights(schedule, T, "epsilon", "min_snr", gamma), clamped / snr)
    close(loss_weights(schedule, T, "v_prediction", "min_snr", gamma), clamped / (snr + 1))
    close(loss_weights(schedule, T, "sample", "min_snr", gamma), clamped)
    torch.testing.assert_close(loss_weights(schedule, T, "v_prediction", "uniform", gamma), torch.ones(len(T)).double())


def test_min_snr_plus_one_keeps_v_weight_one_where_noise_dominates():
    schedule = NoiseSchedule.cosine(rescale_zero_terminal_snr=True)
    alpha, sigma = schedule.alpha_sigma(schedule.sigma(T))
    snr = (alpha / sigma) ** 2
    weights = loss_weights(schedule, T, "v_prediction", "min_snr_plus_one", 5.0)
    torch.testing.assert_close(weights, torch.clamp(5.0 / (snr + 1), max=1.0))
    assert weights[-1].item() == pytest.approx(1.0)
    last = torch.tensor([999.0])  # pure noise: min_snr gives it no weight at all, min_snr_plus_one full weight
    assert loss_weights(schedule, last, "v_prediction", "min_snr", 5.0).item() == 0.0
    assert loss_weights(schedule, last, "v_prediction", "min_snr_plus_one", 5.0).item() == pytest.approx(1.0)
    assert loss_weights(schedule, T[-1:], "v_prediction", "min_snr", 5.0).item() < 1e-3


class FixedGuess(torch.nn.Module):
    """Outputs, in a given parameterisation, the prediction that means a fixed x0 guess."""

    def __init__(self, schedule, prediction_type, guess):
        super().__init__()
        self.denoiser = Denoiser(lambda *a: None, schedule, prediction_type)
        self.schedule, self.guess = schedule, guess

    def forward(self, x_t, t):
        alpha, sigma = self.schedule.alpha_sigma(self.schedule.sigma(t.double()))
        c_x, c_out = (c.view(-1, 1, 1, 1).float() for c in self.denoiser.output_coefficients(alpha, sigma))
        return (self.guess - c_x * x_t) / c_out


@pytest.mark.parametrize("weighting", ["min_snr", "min_snr_plus_one"])
def test_weighted_loss_is_the_same_x0_loss_in_every_parameterisation(weighting):
    """Both weightings are defined in x0 space, so a prediction meaning the same x0 costs the same."""
    torch.manual_seed(0)
    schedule = NoiseSchedule.cosine()
    x0, noise = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    guess = x0 + 0.3 * torch.randn_like(x0)
    t = torch.tensor([100.0, 300, 500, 700, 900])
    losses = [diffusion_loss(FixedGuess(schedule, p, guess), x0, {}, t, noise, schedule, p, weighting, 5.0)
              for p in PREDICTIONS]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], rtol=1e-4, atol=1e-6)
    exact = FixedGuess(schedule, "v_prediction", x0)
    assert diffusion_loss(exact, x0, {}, t, noise, schedule, "v_prediction", weighting).item() < 1e-10


def test_logit_normal_timesteps_follow_sd3_with_their_mean():
    """u = sigmoid(m + n): the drawn fraction t / T has median sigmoid(m) and its logit is N(m, 1)."""
    from difflab.train import build_config
    from difflab.train.objectives.denoising import draw_per_sample
    schedule = NoiseSchedule.cosine()
    for m in (0.0, 1.0):
        t, _, _ = draw_per_sample(0, list(range(4000)), (1,), schedule, "logit_normal", m)
        u = (t + 0.5) / schedule.num_train_timesteps
        logit = torch.log(u / (1 - u))
        assert abs(t.median().item() / 1000 - torch.sigmoid(torch.tensor(m)).item()) < 0.02
        assert abs(logit.mean().item() - m) < 0.06 and abs(logit.std().item() - 1) < 0.06
    uniform, _, _ = draw_per_sample(0, list(range(4000)), (1,), schedule, "uniform")
    assert abs(uniform.mean().item() - 499.5) < 15
    with pytest.raises(ValueError, match="logit_mean"):
        build_config("tiny", None, {"logit_mean": 1.0})                   # only with logit_normal
    with pytest.raises(ValueError, match="logit_mean"):
        build_config("tiny", None, {"timestep_sampling": "logit_normal", "logit_mean": 9.0})
