"""Closed-form problems for tests and benchmarks: data whose exact denoiser and exact ODE solution are known."""
