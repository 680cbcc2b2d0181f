"""Before/after tables of `ar1 rl` runs: `python -m ar1_jax.rl.report RUN_DIR [RUN_DIR ...]`.

Each run directory is one `ar1 rl ... --heldout N` run: `config.json`, `metrics.jsonl` and
`heldout_before.json` / `heldout_after.json` (`ar1_jax.rl.heldout.evaluate`'s summaries). The report
has one row per run (held-out scores of the starting and the final policy, the KL to the reference
over training, wall time) and one row per expert method with the mean and spread over its seeds.
A run without both held-out files is listed as incomplete rather than dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Sequence

#: Held-out columns in the tables: (summary key, short name, +1 if higher is better else -1).
COLUMNS = (
    ("reward/total", "total reward", +1),
    ("consistency_rate", "consistency", +1),
    ("reward/reasoning", "reasoning", +1),
    ("collision_or_offroad_rate", "coll+offroad", -1),
    ("collision_rate", "collision", -1),
    ("offroad_rate", "off-road", -1),
    ("reward/format", "format", +1),
)


@dataclass(frozen=True)
class Run:
    path: pathlib.Path
    method: str  # rl.expert_loss (and rl.token_loss when it is not the default grpo)
    seed: int
    steps: int
    before: dict | None
    after: dict | None
    kl_mean: float
    kl_max: float
    wall_s: float  # training wall time: each logged row's step_time_s times the steps since the row before


def load_run(path: str | pathlib.Path) -> Run:
    """A run directory's config, metrics and held-out summaries. FileNotFoundError naming the file
    when config.json or metrics.jsonl is missing."""
    path = pathlib.Path(path)
    for name in ("config.json", "metrics.jsonl"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: no {name} (not an `ar1 rl` run directory)")
    cfg = json.loads((path / "config.json").read_text())
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rl = cfg.get("rl", {})
    method = rl.get("expert_loss", "?")
    if rl.get("token_loss", "grpo") != "grpo":
        method += f" / {rl['token_loss']}"
    kls = [r["kl"] for r in rows if r.get("kl") is not None]
    # A row's step_time_s is the mean over the steps since the previous row (train.log_every apart).
    wall, prev = 0.0, 0
    for r in rows:
        wall += (r.get("step_time_s") or 0.0) * (r["step"] - prev)
        prev = r["step"]

    def summary(when):
        f = path / f"heldout_{when}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    return Run(path=path, method=method, seed=int(cfg.get("seed", 0)), steps=max((r["step"] for r in rows), default=0),
               before=summary("before"), after=summary("after"), kl_mean=_mean(kls), kl_max=max(kls, default=math.nan),
               wall_s=wall)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def improved(run: Run, key: str, sign: int) -> bool | None:
    """Whether `key` moved the right way from before to after (None for an incomplete run)."""
    if run.before is None or run.after is None:
        return None
    return sign * (run.after[key] - run.before[key]) > 0


def markdown(runs: Sequence[Run]) -> str:
    """Two tables: every run's before -> after, and per method the mean (std) over seeds of the change."""
    head = "| run | method | seed | steps | " + " | ".join(name for _, name, _ in COLUMNS) + " | KL mean / max | wall |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        if r.before is None or r.after is None:
            cells = ["(no held-out before/after)"] * len(COLUMNS)
        else:
            cells = [f"{r.before[k]:.3f} -> {r.after[k]:.3f}" for k, _, _ in COLUMNS]
        lines.append(f"| {r.path.name} | {r.method} | {r.seed} | {r.steps} | " + " | ".join(cells)
                     + f" | {r.kl_mean:.4f} / {r.kl_max:.4f} | {r.wall_s / 60:.1f} min |")
    lines += ["", "Change after - before, mean (std) over seeds:", ""]
    head = "| method | seeds | " + " | ".join(name for _, name, _ in COLUMNS) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for method in sorted({r.method for r in runs}):
        done = [r for r in runs if r.method == method and r.before is not None and r.after is not None]
        if not done:
            continue
        cells = []
        for key, _, sign in COLUMNS:
            deltas = [r.after[key] - r.before[key] for r in done]
            better = sum(sign * d > 0 for d in deltas)
            spread = "" if len(deltas) < 2 else f" ({_std(deltas):.3f})"
            cells.append(f"{_mean(deltas):+.3f}{spread}, better in {better}/{len(deltas)}")
        lines.append(f"| {method} | {len(done)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ar1_jax.rl.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="`ar1 rl --heldout N` run directories")
    parser.add_argument("--out", metavar="FILE", help="also write the tables to FILE")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(p) for p in args.runs]
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(runs)
    print(text, end="")
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
