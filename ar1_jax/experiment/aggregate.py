"""The long-tail experiment's numbers: per family group, per model, the mean and the 95% t-interval over
seeds of each key metric (`summarize`); Markdown tables (`markdown`), plots (`plot`), and the section
it keeps in a results file (`put_section`).

Groups: "overall" (every evaluation scene), "common" and "long tail" (scene-weighted means over the
families `eval.run.LONG_TAIL_EXCLUDED` names, and over the others), then each family. A model's value
for a group is the evaluation's mean over that group's scenes; the interval is over its seeds:
mean +- t(0.975, n - 1) s / sqrt(n), s the sample standard deviation of the n seeds' values (no
interval with one seed; the bounds are deterministic and have one value).
"""

from __future__ import annotations

import math
import pathlib
import platform
import time
from typing import Any, Sequence

import numpy as np

__all__ = ["METRICS", "mean_ci", "group_value", "summarize", "markdown", "console_table", "plot", "put_section"]

#: (eval.json key, column label, "lower" or "higher" is better).
METRICS = (("min_ade@3.0", "minADE_K @ 3 s (m)", "lower"), ("collision_rate", "collision", "lower"),
           ("offroad_rate", "off-road", "lower"), ("consistency_rate", "consistency", "higher"),
           ("cl/score", "closed loop: AlpaSim score", "higher"),
           ("cl/at_fault_rate", "closed loop: at-fault", "lower"),
           ("cl/offroad_rate", "closed loop: off-road", "lower"))


def _t_quantile(p: float, df: int) -> float:
    from scipy import stats  # a dependency of jax

    return float(stats.t.ppf(p, df))


def mean_ci(values: Sequence[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    """(mean, half-width of the `level` t-interval) of the finite values; (None, None) without any, and
    no half-width with one."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return None, None
    if len(v) < 2:
        return float(v[0]), None
    return float(v.mean()), _t_quantile(0.5 + level / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))


def group_value(report: dict[str, Any], key: str, group: str) -> float | None:
    """`key` of an eval report ({"overall", "families"}) for a group: "overall", "common", "long tail"
    (scene-weighted over the families) or a family name; None when nothing counts."""
    from ar1_jax.eval.run import LONG_TAIL_EXCLUDED

    if group == "overall":
        return report["overall"].get(key)
    if group in ("common", "long tail"):
        num = den = 0.0
        for fam, d in report["families"].items():
            if (fam in LONG_TAIL_EXCLUDED) != (group == "common") or d.get(key) is None:
                continue
            num, den = num + d[key] * d["num_scenes"], den + d["num_scenes"]
        return num / den if den else None
    return report["families"].get(group, {}).get(key)


def _groups(report: dict[str, Any]) -> list[tuple[str, int]]:
    from ar1_jax.eval.run import LONG_TAIL_EXCLUDED

    fams = report["families"]
    common = [f for f in sorted(fams) if f in LONG_TAIL_EXCLUDED]
    tail = [f for f in sorted(fams) if f not in LONG_TAIL_EXCLUDED]
    count = lambda names: sum(fams[f]["num_scenes"] for f in names)
    return ([("overall", report["overall"]["num_scenes"]), ("common", count(common)), ("long tail", count(tail))]
            + [(f, fams[f]["num_scenes"]) for f in common + tail])


def summarize(runs: Sequence, results: dict[str, dict], seconds: dict[str, float], settings) -> dict[str, Any]:
    """The experiment's summary from its runs (`longtail.plan`), their results and wall times: sizes,
    rows (one per size x model), per group per row per metric {"mean", "ci95", "values"}, seconds."""
    from ar1_jax.experiment.longtail import BASELINES, VARIANTS

    rows, reports = [], {}
    for size in settings.sizes:
        for key in settings.variants():
            rid = f"{size}/{key}"
            rows.append({"id": rid, "size": size, "model": key, "label": VARIANTS[key].label})
            reports[rid] = [results[r.name] for r in runs if r.kind == "eval" and r.size == size and r.variant == key
                            and r.name in results]
        base = results.get(f"{size}/baselines", {})
        for key, label in BASELINES.items():
            rid = f"{size}/{key}"
            rows.append({"id": rid, "size": size, "model": key, "label": label})
            reports[rid] = [base[key]] if key in base else []
    first = next((r for reps in reports.values() for r in reps), None)
    if first is None:
        raise ValueError("summarize: no evaluation finished")
    groups = {}
    for group, n in _groups(first):
        table = {}
        for row in rows:
            cells = {}
            for key, _, _ in METRICS:
                values = [group_value(rep, key, group) for rep in reports[row["id"]]]
                mean, half = mean_ci(values)
                cells[key] = {"mean": mean, "ci95": half, "values": values}
            table[row["id"]] = cells
        groups[group] = {"scenes": n, "rows": table}
    for row in rows:
        row["seeds"] = len(reports[row["id"]])
    by_kind: dict[str, float] = {}
    for r in runs:
        if r.name in seconds:
            by_kind[r.kind] = round(by_kind.get(r.kind, 0.0) + seconds[r.name], 1)
    sizes = {s: {k: results.get(f"{s}/data", {}).get(k) for k in ("params", "train_scenes", "test_scenes", "families")}
             for s in settings.sizes}
    return {"settings": {**settings.key(), "seeds": settings.seeds, "sizes": list(settings.sizes)}, "sizes": sizes,
            "rows": rows, "groups": groups, "seconds": {"total": round(sum(seconds.values()), 1), "by_kind": by_kind},
            "date": time.strftime("%Y-%m-%d"), "machine": _machine()}


def _machine() -> str:
    import os

    return f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPU cores"


def _cell(c: dict[str, Any]) -> str:
    if c["mean"] is None:
        return "-"
    return f"{c['mean']:.3f}" + (f" ± {c['ci95']:.3f}" if c["ci95"] is not None else "")


def _label(row: dict[str, Any], summary: dict[str, Any]) -> str:
    if len(summary["sizes"]) == 1:
        return row["label"]
    params = summary["sizes"][row["size"]].get("params")
    return f"{row['label']}, {row['size']}" + (f" ({params / 1e6:.2f}M)" if params else "")


def _columns(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The metrics with at least one value (closed-loop columns drop out without the closed loop)."""
    overall = summary["groups"]["overall"]["rows"]
    return [m for m in METRICS if any(cells[m[0]]["mean"] is not None for cells in overall.values())]


def group_table(summary: dict[str, Any], group: str) -> list[str]:
    """One group's Markdown table: a row per size x model, a column per metric."""
    cols = _columns(summary)
    heads = [f"{label} {'↓' if better == 'lower' else '↑'}" for _, label, better in cols]
    lines = ["| model | seeds | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(cols)]
    for row in summary["rows"]:
        cells = summary["groups"][group]["rows"][row["id"]]
        lines.append(f"| {_label(row, summary)} | {row['seeds']} | " + " | ".join(_cell(cells[k]) for k, _, _ in cols)
                     + " |")
    return lines


def command(summary: dict[str, Any], out: str) -> str:
    """The command line that reproduces (or resumes) the experiment."""
    s = summary["settings"]
    parts = ["ar1 experiment longtail", f"--out {out}", f"--seeds {s['seeds']}", f"--sizes {','.join(s['sizes'])}",
             f"--scenes {s['scenes']}", f"--steps {s['steps']}", f"--rl-steps {s['rl_steps']}",
             f"--eval-scenes {s['eval_scenes']}"]
    parts += [f"--samples {s['samples']}"] if s["samples"] else []
    parts += [] if s["closed_loop"] else ["--open-loop-only"]
    parts += [f"--set {o}" for o in s["overrides"]]
    return " ".join(parts)


def markdown(summary: dict[str, Any], plots: Sequence[pathlib.Path], out: pathlib.Path, *, heading_level: int = 1,
             relative_to: pathlib.Path | None = None) -> str:
    """The experiment as Markdown: settings, budget, wall time, a table per group, the plots (linked
    relative to `relative_to`, default OUT)."""
    import os

    h = "#" * heading_level
    s, sec = summary["settings"], summary["seconds"]
    sizes = ", ".join(f"`{n}` ({d['params'] / 1e6:.2f}M parameters)" if d.get("params") else f"`{n}`"
                      for n, d in summary["sizes"].items())
    kinds = ", ".join(f"{k} {v / 60:.1f}" for k, v in sec["by_kind"].items())
    first = next(iter(summary["sizes"].values()))
    lines = [
        f"{h} Long-tail experiment: reasoning vs trajectory-only at the same budget",
        "",
        f"`{command(summary, str(out))}`, {summary['date']}, {summary['machine']}.",
        "",
        f"- **Models**: {sizes}. Rows: (a) trajectory-only (SFT without the reasoning block, driven by the "
        "flow expert straight after the prompt); (b) AR1 after SFT (reasoning, then the flow expert; the driven "
        "sample is the most likely one consistent with its reasoning); (c) (b) after RL; (d) (b)'s weights "
        "driving from their 128 discrete trajectory tokens instead of the expert; the rule planner (it reads "
        "the agents' logs: an upper bound) and constant velocity.",
        f"- **Budget, the same for every model**: {s['scenes']} synthetic scenes per size (data seed 0; "
        f"{first.get('train_scenes')} train / {first.get('test_scenes')} test), {s['steps']} SFT steps at the "
        f"config's batch and learning rate; (c) adds {s['rl_steps']} RL steps; (d) trains nothing more.",
        f"- **Seeds**: {s['seeds']} (initialisation, data order, RL and evaluation sampling); the data and the "
        "evaluation scenes are the same for every seed. Cells: mean ± the half-width of the 95% t-interval "
        "over seeds; the bounds are deterministic (one value).",
        f"- **Evaluation**: {s['eval_scenes']} held-out world scenes (seeds from 3,000,000), K = "
        f"{s['samples'] or 'the config'}'s samples, minADE_K over them; open loop scores the driven sample in "
        "the world" + ("; closed loop drives 6.4 s replanning every 0.5 s against log-replayed agents "
                       "(AlpaSim's score)." if s["closed_loop"] else "; no closed loop."),
        f"- **Wall time**: {sec['total'] / 60:.1f} min summed over the runs (minutes: {kinds}).",
    ]
    for group, g in summary["groups"].items():
        tail = " (lane and lead following)" if group == "common" else (" (every other family)" if group == "long tail"
                                                                        else "")
        lines += ["", f"{h}# {group}{tail}: {g['scenes']} scenes", ""] + group_table(summary, group)
    if plots:
        base = relative_to or out
        lines += [""] + [f"![{p.stem}]({os.path.relpath(p, base)})" for p in plots]
    return "\n".join(lines) + "\n"


def console_table(summary: dict[str, Any]) -> str:
    """The overall and long-tail tables, for the terminal."""
    out = []
    for group in ("overall", "long tail"):
        out += ["", f"{group} ({summary['groups'][group]['scenes']} scenes)"] + group_table(summary, group)
    return "\n".join(out)


def plot(summary: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    """OUT/longtail_<size>.png (a panel per metric: a bar per model for overall / common / long tail, with
    the 95% interval) and, with several sizes, OUT/sizes.png (minADE and AlpaSim score against the
    parameter count). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(summary)
    paths = []
    for size in summary["sizes"]:
        rows = [r for r in summary["rows"] if r["size"] == size]
        ncols = min(len(cols), 4)
        nrows = -(-len(cols) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.6 * nrows), squeeze=False)
        for ax in axes.flat[len(cols):]:
            ax.axis("off")
        x = np.arange(len(rows))
        for ax, (key, label, better) in zip(axes.flat, cols):
            for j, group in enumerate(("overall", "common", "long tail")):
                cells = [summary["groups"][group]["rows"][r["id"]][key] for r in rows]
                mean = [np.nan if c["mean"] is None else c["mean"] for c in cells]
                err = [0.0 if c["ci95"] is None else c["ci95"] for c in cells]
                ax.bar(x + (j - 1) * 0.27, mean, 0.27, yerr=err, capsize=2, label=group)
            ax.set_title(f"{label} ({better} is better)", fontsize=8)
            ax.set_xticks(x, [r["label"] for r in rows], rotation=60, ha="right", fontsize=7)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{size}: mean and 95% interval over {summary['settings']['seeds']} seed(s)", fontsize=9)
        fig.tight_layout()
        path = out / f"longtail_{size}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    params = {s: d.get("params") for s, d in summary["sizes"].items()}
    if len(params) > 1 and all(params.values()):
        keys = [m for m in cols if m[0] in ("min_ade@3.0", "cl/score")]
        fig, axes = plt.subplots(1, 2 * len(keys), figsize=(4 * 2 * len(keys), 3.5), squeeze=False)
        for i, ((key, label, _), group) in enumerate([(k, g) for k in keys for g in ("overall", "long tail")]):
            ax = axes[0][i]
            for model in dict.fromkeys(r["model"] for r in summary["rows"]):
                pts = [(params[r["size"]], summary["groups"][group]["rows"][r["id"]][key]) for r in summary["rows"]
                       if r["model"] == model]
                pts = [(p, c) for p, c in pts if c["mean"] is not None]
                if pts:
                    ax.errorbar([p for p, _ in pts], [c["mean"] for _, c in pts], fmt="o-", capsize=2,
                                yerr=[c["ci95"] or 0.0 for _, c in pts],
                                label=next(r["label"] for r in summary["rows"] if r["model"] == model))
            ax.set_xscale("log")
            ax.set_xlabel("parameters")
            ax.set_title(f"{label}, {group}", fontsize=8)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        path = out / "sizes.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def put_section(path: str | pathlib.Path, key: str, text: str) -> None:
    """Puts `text` into the Markdown file `path` between markers naming `key`: in place of the section an
    earlier call left for the same key, else at the end."""
    path = pathlib.Path(path)
    begin, end = f"<!-- ar1 experiment longtail: {key} -->", f"<!-- end ar1 experiment longtail: {key} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        rest = old[old.index(end) + len(end):].lstrip("\n")
        new = old[:old.index(begin)] + block + ("\n" + rest if rest else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    path.write_text(new)
