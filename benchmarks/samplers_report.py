"""The report of ``benchmarks/samplers.py``: Markdown tables and the error-against-NFE plot from its results
(one dict per run: setting, data, library, method, spacing, metric, target_nfe, nfe, error)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import numpy as np

from difflab.samplers import SAMPLER_INFO, SAMPLERS


class Index:
    """Errors by (setting, data, library, method, spacing, metric, target NFE); NaN where not run; with the
    benchmark's settings (name -> Setting: spacings, default_spacing) and ``specs(setting)``, the diffusers
    schedulers it ran beside difflab's samplers."""

    def __init__(self, results, settings: dict, specs):
        self.settings, self.specs = settings, specs
        self.rows = {(r["setting"], r["data"], r["library"], r["method"], r["spacing"], r["metric"], r["target_nfe"]): r
                     for r in results}
        self.datasets = sorted({r["data"] for r in results})
        self.nfes = sorted({r["target_nfe"] for r in results})

    def error(self, *key) -> float:
        row = self.rows.get(key)
        return row["error"] if row else math.nan

    def cells(self, *key) -> str:
        """'gauss / mixture' errors of one key without the data set."""
        setting, rest = key[0], key[1:]
        return " / ".join(_fmt(self.error(setting, d, *rest)) for d in self.datasets)

    def score(self, *key) -> float:
        """Geometric mean over the data sets."""
        return _geomean([self.error(key[0], d, *key[1:]) for d in self.datasets])


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2g}" if value < 0.01 else f"{value:.3f}"


def _geomean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values)) if values else math.nan


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def ranking(index, setting: str, nfe: int) -> list[tuple[float, str, str]]:
    """Deterministic difflab (sampler, spacing) pairs by the geometric mean of their ODE errors."""
    pairs = [(index.score(setting, "difflab", sampler, spacing, "ode", nfe), sampler, spacing)
             for sampler in SAMPLERS if not SAMPLER_INFO[sampler].stochastic for spacing in index.settings[setting].spacings]
    return sorted(p for p in pairs if not math.isnan(p[0]))


def sampler_tables(index, setting: str, nfe: int, floor: float) -> list[str]:
    spacings = list(index.settings[setting].spacings)
    lines = []
    for metric, stochastic, title in (("ode", False, "ODE error (RMS vs the exact PF-ODE solution), deterministic"),
                                      ("w2", True, f"distribution error W2 (Gaussian: exact; mixture: Monte Carlo, "
                                                   f"floor {_fmt(floor)}), stochastic")):
        rows = [[sampler] + [index.cells(setting, "difflab", sampler, sp, metric, nfe) for sp in spacings]
                for sampler in SAMPLERS if SAMPLER_INFO[sampler].stochastic == stochastic]
        lines += [f"**{setting.upper()}**: {title} samplers", ""] + _table(["sampler"] + spacings, rows)
    return lines


def diffusers_table(index, setting: str, nfe: int) -> list[str]:
    specs = index.specs(setting)
    if not specs:
        return []
    default = index.settings[setting].default_spacing
    rows = []
    for spec in specs:
        metric = "w2" if spec.stochastic else "ode"
        nfe_used = index.rows.get((setting, index.datasets[0], "diffusers", spec.label, "default", metric, nfe), {})
        best = min(index.settings[setting].spacings,
                   key=lambda sp: _nan_last(index.score(setting, "difflab", spec.sampler, sp, metric, nfe)))
        rows.append([spec.label, nfe_used.get("nfe", "–"),
                     index.cells(setting, "diffusers", spec.label, "default", metric, nfe),
                     spec.sampler, index.cells(setting, "difflab", spec.sampler, default, metric, nfe),
                     f"{index.cells(setting, 'difflab', spec.sampler, best, metric, nfe)} ({best})"])
    return [f"**{setting.upper()}**: diffusers' default configuration beside difflab's same algorithm "
            "(ODE error for deterministic samplers, W2 for stochastic)", ""] + \
        _table(["diffusers scheduler", "NFE", "diffusers", "difflab sampler", f"difflab, {default}",
                "difflab, best spacing"], rows)


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def summary_table(index, setting: str, nfe: int, top: int = 6) -> list[str]:
    """The best pairs at ``nfe``, over all NFEs, beside diffusers' deterministic defaults."""
    rows = [(f"{s} + {sp}", "difflab", s, sp) for _, s, sp in ranking(index, setting, nfe)[:top]]
    rows += [(f"diffusers {spec.label}", "diffusers", spec.label, "default") for spec in index.specs(setting)
             if spec.sampler in ("dpmpp_2m", "unipc", "euler") and not spec.stochastic]
    table = [[label] + [_fmt(index.score(setting, library, method, spacing, "ode", n)) for n in index.nfes]
             for label, library, method, spacing in rows]
    return [f"**{setting.upper()}**: ODE error, geometric mean over {' and '.join(index.datasets)}, against NFE: "
            f"the best difflab pairs at {nfe} NFE and diffusers' defaults", ""] + \
        _table(["method"] + [str(n) for n in index.nfes], table)


def markdown(results, overhead_rows, meta, settings: dict, specs, nfe: int = 10) -> str:
    index = Index(results, settings, specs)
    settings = [s for s in settings if any(r["setting"] == s for r in results)]
    lines = [f"Errors at {nfe} NFE (fewer where a sampler's evaluations do not divide it; exact NFE in the JSON); "
             f"cells: {' / '.join(index.datasets)}.", ""]
    for setting in settings:
        lines += summary_table(index, setting, nfe)
    for setting in settings:
        lines += sampler_tables(index, setting, nfe, meta["monte_carlo_floor"]) + diffusers_table(index, setting, nfe)
    if overhead_rows:
        lines += [f"Overhead per model evaluation: trivial model, [1, 4] tensor, {overhead_rows[0]['steps']} steps, "
                  "whole loop (µs; difflab = `difflab.sample`):", ""]
        header = ["difflab sampler", "µs", "sampler alone µs", "diffusers scheduler", "µs", "difflab / diffusers"]
        lines += _table(header, [[r["sampler"], f"{r['difflab_us']:.0f}", f"{r['difflab_sampler_alone_us']:.0f}",
                                  r["diffusers"], f"{r['diffusers_us']:.0f}", f"{r['ratio']:.2f}"]
                                 for r in overhead_rows])
    return "\n".join(lines)


def plot(results, path: Path, settings: dict, specs) -> None:
    """Error against NFE: a row per setting; ODE error (deterministic) and W2 (stochastic) per data set.
    Each difflab sampler is drawn on its best spacing at 10 NFE, diffusers' defaults dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    index = Index(results, settings, specs)
    settings = [s for s in settings if any(r["setting"] == s for r in results)]
    panels = [(d, metric) for metric in ("ode", "w2") for d in index.datasets]
    fig, axes = plt.subplots(len(settings), len(panels), figsize=(5.2 * len(panels), 4 * len(settings)), squeeze=False)
    colors = dict(zip(SAMPLERS, plt.cm.tab20(np.linspace(0, 1, len(SAMPLERS)))))
    for row, setting in enumerate(settings):
        for col, (data, metric) in enumerate(panels):
            ax = axes[row][col]
            stochastic = metric == "w2"
            for sampler in (s for s in SAMPLERS if SAMPLER_INFO[s].stochastic == stochastic):
                spacing = _best_spacing(index, setting, data, sampler, metric)
                match = dict(setting=setting, data=data, library="difflab", method=sampler, spacing=spacing,
                             metric=metric)
                _curve(ax, results, match, f"{sampler} ({spacing})", colors[sampler], "-")
            for spec in (s for s in index.specs(setting) if s.stochastic == stochastic):
                _curve(ax, results, dict(setting=setting, data=data, library="diffusers", method=spec.label,
                                         metric=metric), f"diffusers {spec.label}", colors[spec.sampler], "--")
            ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"{setting.upper()}, {data}: {metric}")
            ax.set_ylim(top=min(ax.get_ylim()[1], 3.0))  # a few samplers diverge at 4-5 NFE
            ax.set_xticks(index.nfes, [str(n) for n in index.nfes])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _best_spacing(index, setting, data, sampler, metric, nfe=10) -> str:
    return min(index.settings[setting].spacings,
               key=lambda sp: _nan_last(index.error(setting, data, "difflab", sampler, sp, metric, nfe)))


def _curve(ax, results, match: dict, label, color, style):
    points = sorted((r["nfe"], r["error"]) for r in results if all(r.get(k) == v for k, v in match.items()))
    if points:
        ax.plot(*zip(*points), style, color=color, label=label, marker=".", markersize=3, linewidth=1)


def compact(results: list[dict]) -> dict:
    """Results as {"columns": [...], "rows": [[...], ...]}, errors to 4 significant digits (compact)."""
    columns = ["setting", "data", "library", "method", "sampler", "spacing", "metric", "target_nfe", "nfe", "error"]
    rows = [[float(f"{r[c]:.4g}") if c == "error" else r.get(c, r["method"] if c == "sampler" else None)
             for c in columns] for r in results]
    return {"columns": columns, "rows": rows}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"
