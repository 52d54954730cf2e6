"""Does MiniLM separate 'X above Y' from 'Y above X'? Cosine similarities and probes; prints Markdown.

    python benchmarks/text_probe.py [--out probe.json]

Prompts: every canonical relation prompt "a red circle above a blue square" of the shapes grammar
whose two objects differ in colour and in shape (24 objects, 4 relations: 1440 prompts), encoded by
difflab's MiniLM as the bundled model's conditioner does (``max_length`` 32).

(a) Cosine similarity of the pooled vectors: a prompt against its swap ("B rel A"), its converse
    ("B below A", the same scene), its flipped relation ("A below B"), one colour changed, and an
    unrelated prompt of the same relation.
(b) Probes that name the object on top / left. For each prompt the probe scores the two colours (or
    the two shapes) the prompt names and picks one: logistic regression over the two candidates, so
    chance is 50% and a bag of words scores exactly 50% (a prompt and its swap have the same words).
    Two targets: the first-named object (word order only; for one relation "X above Y" vs "Y above
    X") and the top / left object over all four relations (order bound to the relation's direction,
    what an image needs). Train / validation / test are split by colour-shape pair: test prompts hold
    one of the four pairs difflab's training split never shows (``HELD_OUT``), validation prompts
    (which pick the L2 weight) one of three others, so a probe must generalise to unseen objects.
    A one-hidden-layer MLP beside each linear probe tells "not linearly" from "not at all".
"""

from __future__ import annotations

import argparse
import json
import random
import time
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab.data.shapes import HELD_OUT
from difflab.data.shapes_grammar import COLOURS, RELATIONS, SHAPES, ObjectSpec, Prompt, format_prompt
from difflab.models.text import masked_mean, text_encoder_from_spec

ENCODER = {"type": "minilm", "max_length": 32}     # the bundled model's conditioning.encoder
VAL_OBJECTS = (("red", "square"), ("blue", "cross"), ("yellow", "circle"))   # disjoint from HELD_OUT
LEADING = ("above", "to the left of")              # relations whose first-named object is on top / left
CONVERSE = {"above": "below", "below": "above",                  # "A above B" says what "B below A" says
            "to the left of": "to the right of", "to the right of": "to the left of"}
L2_WEIGHTS = (1e-4, 1e-3, 1e-2)
STEPS, HIDDEN = 200, 64


def relation_prompts() -> list[dict]:
    objects = [ObjectSpec(shape, colour) for colour, shape in product(COLOURS, SHAPES)]
    rows = []
    for relation, a, b in product(RELATIONS, objects, objects):
        if a.colour != b.colour and a.shape != b.shape:
            first = a if relation in LEADING else b                            # the object on top / left
            rows.append({"text": format_prompt(Prompt("relation", (a, b), relation=relation)), "a": a, "b": b,
                         "relation": relation, "first": first})
    return rows


def split_of(row: dict) -> str:
    pairs = {(o.colour, o.shape) for o in (row["a"], row["b"])}
    return "test" if pairs & set(HELD_OUT) else "val" if pairs & set(VAL_OBJECTS) else "train"


# ---------------------------------------------------------------- (a) cosine similarities

def cosine_table(rows: list[dict], pooled: torch.Tensor) -> dict:
    """Pooled-vector cosine of each prompt against its variants; pooled vectors are unit length."""
    index = {r["text"]: i for i, r in enumerate(rows)}
    rng = random.Random(0)

    def other_colour(a, b):
        return next(c for c in COLOURS if c not in (a.colour, b.colour))

    variants = {
        "swapped: B rel A (opposite scene)": lambda r: (r["b"], r["relation"], r["a"]),
        "converse: B rel' A (same scene)": lambda r: (r["b"], CONVERSE[r["relation"]], r["a"]),
        "relation flipped: A rel' B (opposite scene)": lambda r: (r["a"], CONVERSE[r["relation"]], r["b"]),
        "one colour changed: A' rel B": lambda r: (ObjectSpec(r["a"].shape, other_colour(r["a"], r["b"])),
                                                   r["relation"], r["b"]),
    }
    out, cosines = {}, {}
    for name, variant in variants.items():
        pairs = [(i, index[format_prompt(Prompt("relation", (x, y), relation=rel))])
                 for i, r in enumerate(rows) for x, rel, y in [variant(r)]]
        out[name], cosines[name] = _cos_stats(pooled, pairs)
    words = [{r["a"].colour, r["b"].colour, r["a"].shape, r["b"].shape} for r in rows]
    unrelated = [(i, j) for i, j in ((rng.randrange(len(rows)), rng.randrange(len(rows))) for _ in range(20000))
                 if rows[i]["relation"] == rows[j]["relation"] and not words[i] & words[j]][:2000]
    out["unrelated: same relation, no colour or shape shared"], _ = _cos_stats(pooled, unrelated)
    same = cosines["converse: B rel' A (same scene)"]
    out["opposite_nearer_than_same"] = {name.split(":")[0]: (cosines[name] > same).float().mean().item()
                                        for name in variants if "opposite" in name}
    return out


def _cos_stats(pooled: torch.Tensor, pairs: list[tuple[int, int]]) -> tuple[dict, torch.Tensor]:
    i, j = torch.tensor(pairs).T
    cos = (pooled[i] * pooled[j]).sum(1)
    stats = {"mean": cos.mean().item(), "min": cos.min().item(), "max": cos.max().item(), "n": len(pairs)}
    return stats, cos


# ---------------------------------------------------------------- (b) probes

def feature_sets(rows: list[dict], tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> dict:
    """name -> [N, D] features. Token layout: [CLS] a colour SHAPE relation... a colour SHAPE [SEP]."""
    lengths = mask.sum(1)                                                      # [N]
    words = torch.tensor([len(r["text"].split()) for r in rows])
    if not torch.equal(lengths, words + 2):
        raise RuntimeError("the probe assumes one token per word (the shapes vocabulary in MiniLM's tokenizer)")
    longest = int(lengths.max())
    rows_idx = torch.arange(len(rows))
    nouns = torch.cat([tokens[rows_idx, 3], tokens[rows_idx, lengths - 2]], dim=1)   # the two shape words
    vocab = sorted({w for r in rows for w in r["text"].split()})
    position = torch.zeros(len(rows), longest, len(vocab))                   # one-hot word at each position
    for n, r in enumerate(rows):
        for k, w in enumerate(r["text"].split()):
            position[n, k, vocab.index(w)] = 1
    return {"pooled (normalised token mean)": pooled,
            "mean of token states": masked_mean(tokens, mask),
            "token states at fixed positions, concatenated": tokens[:, :longest].flatten(1),
            "states of the two shape words, concatenated": nouns,
            "control: bag of words": position.sum(1),
            "control: one-hot word per position (no encoder)": position.flatten(1)}


def targets(rows: list[dict], attribute: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate class ids [N, 2] (the two objects' colours or shapes) and the index of the right one."""
    names = list(COLOURS) if attribute == "colour" else list(SHAPES)
    cand = torch.tensor([[names.index(getattr(r[k], attribute)) for k in ("a", "b")] for r in rows])
    right = torch.tensor([0 if r[which] is r["a"] else 1 for r in rows])
    return cand, right


def fit(x: torch.Tensor, cand: torch.Tensor, right: torch.Tensor, classes: int, l2: float, mlp: bool):
    """Logistic regression (or an MLP) scoring every class, trained by cross-entropy over the two
    candidates of each prompt plus ``l2`` times the squared weights (full batch, Adam)."""
    torch.manual_seed(0)
    d = x.shape[1]
    net = (torch.nn.Sequential(torch.nn.Linear(d, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, classes)) if mlp
           else torch.nn.Linear(d, classes))
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(net(x).gather(1, cand), right) + l2 * sum(w.square().sum() for w in weights)
        loss.backward()
        opt.step()
    return net


def accuracy(net, x, cand, right) -> float:
    with torch.no_grad():
        return (net(x).gather(1, cand).argmax(1) == right).float().mean().item()


def prepare(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Standardise with train statistics; wider than the train set, keep only the span of the train
    rows (an L2-regularised linear model's weights lie in it, so a linear probe loses nothing)."""
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    if x.shape[1] > int(train.sum()):
        _, s, vh = torch.linalg.svd(x[train], full_matrices=False)              # vh [n_train, D]
        x = x @ vh[s > s[0] * 1e-6].T                                          # [N, rank]
    return x


def probe(data: dict, cand, right, classes: int, mlp: bool) -> dict:
    """Pick the L2 weight on validation; train, validation and test accuracy.
    ``data``: split -> (prepared features, row mask)."""
    parts = {s: (x, cand[m], right[m]) for s, (x, m) in data.items()}
    best = None
    for l2 in L2_WEIGHTS:
        net = fit(*parts["train"], classes, l2, mlp)
        val = accuracy(net, *parts["val"])
        if best is None or val > best[0]:
            best = (val, l2, net)
    val, l2, net = best
    return {"train": accuracy(net, *parts["train"]), "val": val, "test": accuracy(net, *parts["test"]), "l2": l2}


def probe_table(rows: list[dict], features: dict) -> dict:
    split = [split_of(r) for r in rows]
    part = {s: torch.tensor([p == s for p in split]) for s in ("train", "val", "test")}
    out = {"sizes": {s: split.count(s) for s in part}, "rows": []}
    for name, x in features.items():
        x = prepare(x, part["train"])
        data = {s: (x[m], m) for s, m in part.items()}
        for mlp in (False, True):
            row = {"features": name, "dim": features[name].shape[1], "probe": "MLP" if mlp else "linear"}
            for which, attribute in product(("a", "first"), ("colour", "shape")):
                classes = len(COLOURS) if attribute == "colour" else len(SHAPES)
                row[f"{which}_{attribute}"] = probe(data, *targets(rows, attribute, which), classes, mlp)
            out["rows"].append(row)
    return out


def markdown(cosines: dict, probes: dict) -> str:
    lines = ["| pooled cosine: prompt vs | mean | min | max | pairs |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.3f} | {v['min']:.3f} | {v['max']:.3f} | {v['n']} |"
              for k, v in cosines.items() if "mean" in v]
    nearer = cosines["opposite_nearer_than_same"]
    lines += ["", "Prompts whose opposite scene is nearer (pooled cosine) than the same scene said the other way "
              "round (converse): " + ", ".join(f"{k} {v:.3f}" for k, v in nearer.items()) + ".",
              "", "Probe test accuracy (chance 0.50); prompts train / val / test: "
              + " / ".join(str(v) for v in probes["sizes"].values()) + ".", "",
              "| features | dim | probe | first-named: colour | first-named: shape | top/left: colour "
              "| top/left: shape |", "|---|---|---|---|---|---|---|"]
    for r in probes["rows"]:
        cells = [f"{r[k]['test']:.3f}" for k in ("a_colour", "a_shape", "first_colour", "first_shape")]
        lines.append(f"| {r['features']} | {r['dim']} | {r['probe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write every number as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)   # small matrices: a second thread waits on a shared core more than it helps
    start = time.time()
    rows = relation_prompts()
    encoder = text_encoder_from_spec(ENCODER)
    with torch.no_grad():                       # not inference_mode: the probes train on these tensors
        tokens, mask, pooled = encoder.encode([r["text"] for r in rows])      # [N, 32, 384], [N, 32], [N, 384]
    cosines = cosine_table(rows, pooled)
    probes = probe_table(rows, feature_sets(rows, tokens, mask, pooled))
    print(f"MiniLM {ENCODER}, {len(rows)} relation prompts, {time.time() - start:.0f} s\n")
    print(markdown(cosines, probes))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"encoder": ENCODER, "prompts": len(rows), "cosine": cosines,
                                        "probes": probes, "seconds": time.time() - start}, indent=1) + "\n")


if __name__ == "__main__":
    main()
