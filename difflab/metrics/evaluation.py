"""``difflab eval MODEL --prompts shapes-bench``: generate, score with the oracle and FID/KID, report.

Every benchmark entry is generated with its own seed through ``difflab.Pipeline`` (so any model
package works), checked by the adherence oracle, and the whole set is compared with real renders of
the same prompts and seeds by FID and KID on difflab's shapes features. The report gives accuracy per
category, over held-out colour-shape pairs and overall, the feature network's name beside every FID,
and every prompt's verdict with its reasons. ``limit`` takes a balanced sample (round-robin over the
categories). Each report gets its own name (model, prompt set, limit and a hash of the settings) and
is written atomically; an existing report is never overwritten (the new one takes a counter prefix).
A video or audio model is judged by its world's judge instead (:mod:`difflab.metrics.av_eval`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from difflab.outputs import check_output_file, check_output_folder, free_names, write_text

REPORTS = Path("outputs") / "eval"
MEDIA_SETS = ("held-out", "test")       # a video or audio model's prompt sets (difflab.metrics.av_eval)
MEDIA_DEFAULT_LIMIT = 48
ORACLE_COLOURS = ("trained", "all")


@dataclass(frozen=True)
class EvalConfig:
    model: str
    prompts: str = "shapes-bench"
    sampler: str | None = None          # None: the package's default
    steps: int | None = None
    guidance_scale: float | None = None
    batch_size: int = 16
    limit: int | None = None            # a balanced sample of N entries (quick looks); None = all
    fid: bool = True
    out: str | None = None              # JSON path; None = outputs/eval/eval-MODEL-PROMPTS-LIMIT-HASH.json
    device: str = "cpu"                 # where the pipeline runs (the oracle and FID run on the CPU)
    guidance_method: str = "cfg"        # cfg | apg | cfg_zero_star | cfg_pp (difflab.guidance)
    deep_cache: int | None = None       # difflab UNet: recompute deep features every N-th evaluation
    loras: tuple = ()                   # ((path, scale), ...) loaded onto the model before generating
    oracle_colours: str = "trained"     # trained: six colours (+ novel ones a prompt names) | all: PALETTE
    seeds: int = 1                      # each prompt under this many seeds (image prompt sets)

    def validate(self) -> None:
        """Every argument checked before any model is loaded; errors say what is allowed."""
        from difflab import limits
        from difflab.settings import BUNDLED_MODELS, SAMPLER_NAMES, validate_deep_cache, validate_guidance_flags

        if not Path(self.model).is_dir() and self.model not in BUNDLED_MODELS:
            raise ValueError(f"MODEL must be a model package folder (config.json + model.safetensors) or a bundled "
                             f"model ({', '.join(BUNDLED_MODELS)}); {self.model!r} is not a folder")
        validate_deep_cache(self.deep_cache, "--deep-cache")
        if self.oracle_colours not in ORACLE_COLOURS:
            raise ValueError(f"--oracle-colours must be {' or '.join(ORACLE_COLOURS)}, got {self.oracle_colours!r}")
        for path, scale in self.loras:
            if not Path(path).exists():
                raise ValueError(f"--lora {path}: no such file")
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.sampler!r}; available: {', '.join(SAMPLER_NAMES)}")
        validate_guidance_flags(self.guidance_method, self.sampler, self.guidance_scale)
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= 16:
            raise ValueError(f"--seeds must be an integer in [1, 16], got {self.seeds!r}")
        if self.seeds > 1 and self.prompts in MEDIA_SETS:
            raise ValueError(f"--seeds is for image prompt sets; {self.prompts} is a video or audio set")
        for name in ("steps", "limit", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.steps is not None:
            limits.check("steps", self.steps, "sampling steps (--steps)")
        if self.guidance_scale is not None and not 0 <= self.guidance_scale <= 100:
            raise ValueError(f"--guidance must be a number in [0, 100], got {self.guidance_scale!r}")
        if not (isinstance(self.device, str) and self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise ValueError(f"--device must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.out is not None:
            check_output_file(self.out)
        else:
            check_output_folder(REPORTS, "the report folder")

    def report_path(self) -> Path:
        """``out``, or a name of its own: model, prompt set, limit and a hash of the sampling settings."""
        if self.out is not None:
            return Path(self.out)
        settings = json.dumps([self.sampler, self.steps, self.guidance_scale, self.fid]
                              + ([self.guidance_method] if self.guidance_method != "cfg" else [])
                              + ([self.deep_cache] if self.deep_cache not in (None, 1) else [])
                              + ([[list(x) for x in self.loras]] if self.loras else [])
                              + ([self.oracle_colours] if self.oracle_colours != "trained" else [])).encode()
        limit = (f"limit{self.limit}" if self.limit else "all") + (f"-seeds{self.seeds}" if self.seeds > 1 else "")
        return REPORTS / (f"eval-{Path(self.model).name}-{Path(self.prompts).stem}-{limit}-"
                          f"{hashlib.sha256(settings).hexdigest()[:8]}.json")


def _generate(pipe, entries: list[dict], config: EvalConfig, progress: bool) -> tuple[list, dict]:
    """Images of every entry, each from its own seed, and the settings the pipeline used."""
    from tqdm import tqdm

    images, recipe = [], {}
    with tqdm(total=len(entries), desc="generating", unit="img", disable=not progress) as bar:
        for start in range(0, len(entries), config.batch_size):
            batch = entries[start: start + config.batch_size]
            result = pipe([e["prompt"] for e in batch], seed=[e["seed"] for e in batch], steps=config.steps,
                          sampler=config.sampler, guidance_scale=config.guidance_scale,
                          guidance_method=config.guidance_method, deep_cache=config.deep_cache)
            images += [im.convert("RGB") for im in result.images]
            recipe = result.recipes[0]
            bar.update(len(batch))
    return images, {k: recipe.get(k) for k in ("sampler", "steps", "guidance_scale", "spacing")} | (
        {"guidance_method": config.guidance_method} if config.guidance_method != "cfg" else {})


def _distances(images: list, entries: list[dict], resolution: int) -> dict:
    """FID and KID against real renders of the same prompts and seeds, named by their features."""
    from difflab.data.shapes import render
    from difflab.metrics.distances import feature_name, fid, kid

    if len(images) < 2:
        return {"note": "FID/KID need at least 2 images"}
    real = [render(e["prompt"], e["seed"], resolution) for e in entries]
    kid_mean, kid_std = kid(real, images, "shapes", subsets=20)
    return {"features": feature_name("shapes"), "fid": fid(real, images, "shapes"), "kid": kid_mean,
            "kid_std": kid_std, "reference": "real renders of the same prompts and seeds", "n": len(images)}


def evaluate(config: EvalConfig, progress: bool = True) -> dict:
    """Run the benchmark; returns the report and writes it as JSON to ``report["out"]``."""
    from difflab.data.shapes_grammar import PALETTE
    from difflab.metrics.adherence import check
    from difflab.metrics.bench import balanced, load_prompts, report, with_seeds
    from difflab.pipelines import Pipeline

    config.validate()
    entries = (None if config.prompts in MEDIA_SETS
               else with_seeds(balanced(load_prompts(config.prompts), config.limit), config.seeds))
    pipe = Pipeline.from_pretrained(config.model)
    for path, scale in config.loras:
        pipe.load_lora(path, scale)
    if config.device != "cpu":
        pipe.to(config.device)
    if pipe.codec.media != "image":
        if config.seeds > 1:
            raise ValueError(f"--seeds is for image models; {config.model} makes {pipe.codec.media}")
        return _evaluate_media(pipe, config, progress)
    if entries is None:
        raise ValueError(f"--prompts {config.prompts} names a set of the video and audio worlds; {config.model} "
                         f"makes images: use shapes-bench or a prompt file")
    if pipe.channels != 3:
        raise ValueError(f"{config.prompts} needs an RGB text-to-image model; {config.model} makes "
                         f"{pipe.channels}-channel images")
    images, settings = _generate(pipe, entries, config, progress)
    colours = tuple(PALETTE) if config.oracle_colours == "all" else None
    verdicts = [check(image, e["prompt"], colours=colours) for image, e in zip(images, entries)]
    results = [{**e, "ok": v["ok"], "failed": [r["reason"] for r in v["requirements"] if not r["ok"]],
                "objects": v["objects"]} for e, v in zip(entries, verdicts)]
    path = config.report_path()
    out = free_names(path.parent, [path.name])[0]   # an earlier report keeps its name
    summary = {"model": str(config.model), "prompts": config.prompts, "settings": settings,
               "config": asdict(config), "table": report(entries, [r["ok"] for r in results]),
               "distances": _distances(images, entries, pipe.resolution) if config.fid else None,
               "results": results, "out": str(out)}
    summary["out"] = str(write_text(out, json.dumps(summary, indent=1)))
    return summary


def _evaluate_media(pipe, config: EvalConfig, progress: bool) -> dict:
    """A video or audio model (:mod:`difflab.metrics.av_eval`): the held-out and test sets (or the one
    ``--prompts`` names), ``limit`` prompts each (default 48), judged and compared with real samples."""
    from dataclasses import replace

    from difflab.metrics.av_eval import evaluate_media, prompt_sets

    if config.prompts not in ("shapes-bench", *MEDIA_SETS):
        raise ValueError(f"{config.model} makes {pipe.codec.media}: --prompts takes held-out or test (default: "
                         f"both), not {config.prompts!r}")
    sets = prompt_sets(pipe.codec.media, config.limit or MEDIA_DEFAULT_LIMIT)
    if config.prompts in MEDIA_SETS:
        sets = {config.prompts: sets[config.prompts]}
    report = evaluate_media(pipe, sets, config.batch_size, progress, steps=config.steps, sampler=config.sampler,
                            guidance_scale=config.guidance_scale, guidance_method=config.guidance_method,
                            deep_cache=config.deep_cache)
    named = "+".join(sets)
    path = replace(config, prompts=named).report_path()
    out = free_names(path.parent, [path.name])[0]
    summary = {"model": str(config.model), "prompts": named, "media": pipe.codec.media,
               "settings": {k: v for k, v in (("sampler", config.sampler or pipe.defaults["sampler"]),
                                              ("steps", config.steps or pipe.defaults["steps"]),
                                              ("guidance_scale", config.guidance_scale or pipe.defaults["guidance_scale"]))},
               "config": asdict(config), "rows": report["rows"], "sizes": report["sizes"],
               "per_second": report["per_second"], "results": report["results"], "out": str(out)}
    summary["out"] = str(write_text(out, json.dumps(summary, indent=1)))
    return summary


def format_summary(summary: dict) -> str:
    from difflab.metrics.bench import format_table

    if "rows" in summary:                                          # a video or audio model
        from difflab.metrics.av_eval import format_rows
        return "\n".join([f"model {summary['model']} ({summary['media']}) on {summary['prompts']}: "
                          + ", ".join(f"{k} {v}" for k, v in summary["settings"].items()),
                          *format_rows(summary["rows"], summary["sizes"]),
                          "FD and KIDx1000 on difflab's own clip or sound features (not FVD or FAD), against real "
                          "samples of the same prompts and seeds; on a (real) row, real samples of other seeds",
                          f"wrote {summary['out']}"])
    lines = [f"model {summary['model']} on {summary['prompts']}: "
             + ", ".join(f"{k} {v}" for k, v in summary["settings"].items()), format_table(summary["table"])]
    d = summary.get("distances")
    if d and "fid" in d:
        lines.append(f"FID {d['fid']:.3f}, KID {d['kid']:.4f} +- {d['kid_std']:.4f} on {d['features']}, "
                     f"against {d['reference']} (n={d['n']})")
    lines.append(f"wrote {summary['out']}")
    return "\n".join(lines)
