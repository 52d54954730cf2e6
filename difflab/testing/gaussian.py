"""Closed-form test problems: Gaussian and Gaussian-mixture data, whose exact denoisers are known.

For x0 ~ N(mu, var) (per dimension) and x = x0 + sigma * eps: E[x0 | x] = mu + var / (var + sigma^2) (x - mu),
and the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma keeps (x - mu) / sqrt(var + sigma^2)
constant, so its exact solution from (x_T, sigma_T) to sigma = 0 is mu + (x_T - mu) sqrt(var / (var + sigma_T^2)).
For a mixture, D is the posterior-weighted sum of the components' denoisers.
"""

from __future__ import annotations

import torch

from difflab.denoisers import batch_sigma


class GaussianMixture:
    """Mixture of diagonal Gaussians over vectors of length ``dim`` (weights, means [K, dim], variances [K, dim])."""

    def __init__(self, weights, means, variances):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.variances = torch.as_tensor(variances, dtype=torch.float64)

    @classmethod
    def gaussian(cls, mean, variance):
        return cls([1.0], [mean], [variance])

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Exact E[x0 | x] in VE coordinates; x [B, dim], sigma scalar or [B] (finite)."""
        s2 = batch_sigma(sigma, x).to(torch.float64)[:, None, None] ** 2   # [B, 1, 1]
        xd = x.to(torch.float64)[:, None, :]                                 # [B, 1, dim]
        var = self.variances[None] + s2                                     # [B, K, dim]
        log_p = -0.5 * (((xd - self.means) ** 2) / var + var.log()).sum(-1) + self.weights.log()
        post = torch.softmax(log_p, dim=1)[..., None]                        # [B, K, 1]
        comp = self.means + self.variances / var * (xd - self.means)         # [B, K, dim]
        return (post * comp).sum(1).to(x.dtype)

    def exact_ode_solution(self, x: torch.Tensor, sigma_start: float) -> torch.Tensor:
        """Exact PF-ODE solution at sigma = 0 for a single Gaussian."""
        assert len(self.weights) == 1
        mu, var = self.means[0], self.variances[0]
        return (mu + (x.double() - mu) * torch.sqrt(var / (var + sigma_start**2))).to(x.dtype)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + z * self.variances[k].sqrt()


class NativeModel(torch.nn.Module):
    """The exact denoiser as a native model ``model(x_t, t) -> prediction`` of any prediction type."""

    def __init__(self, mixture: GaussianMixture, schedule, prediction_type: str):
        super().__init__()
        self.mixture, self.schedule, self.prediction_type = mixture, schedule, prediction_type

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.schedule.sigma(t.double())                      # VE sigma [B]
        alpha, sigma_t = (v[:, None] for v in self.schedule.alpha_sigma(sigma))
        x_t = x_t.double()
        at_inf = torch.isinf(sigma)[:, None]
        x_ve = torch.where(at_inf, torch.zeros_like(x_t), x_t / torch.where(at_inf, 1.0, alpha))
        # at sigma = inf the posterior is the prior: E[x0] is the mixture mean
        x0 = torch.where(at_inf, (self.mixture.weights[:, None] * self.mixture.means).sum(0).expand_as(x_t),
                         self.mixture.denoise(x_ve, torch.where(torch.isinf(sigma), 1.0, sigma)).double())
        eps = torch.where(at_inf, x_t, (x_t - alpha * x0) / torch.where(sigma_t > 0, sigma_t, 1.0))
        out = {"epsilon": eps, "sample": x0, "flow": eps - x0, "v_prediction": alpha * eps - sigma_t * x0}
        return out[self.prediction_type].float()


def exact_denoiser(mixture: GaussianMixture):
    return lambda x, sigma, **kw: mixture.denoise(x, sigma)
