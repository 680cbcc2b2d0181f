"""Dated Markdown rows of a `launch/gpu_bench.sh` run, appended to docs/benchmarks.md.

    python -m ar1_jax.bench.report OUT_DIR docs/benchmarks.md [--note TEXT]

Reads what the script left in OUT_DIR: `kernels/kernels.json` (`ar1 bench kernels`), every
`infer_*/infer.json` (`ar1 bench infer`) and `train/metrics.jsonl` (`ar1 train`: step time, tokens/s,
MFU of the steps after the first), and appends one section: the machine and date, then a table per
benchmark. Missing pieces are named as missing, never invented.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics

from ar1_jax.bench.infer import markdown as infer_markdown
from ar1_jax.bench.infer import paper_markdown, paper_row


def kernels_markdown(k: dict) -> str:
    stopped = "" if k.get("complete", True) else "; stopped early: the shapes after these did not run"
    lines = [f"Attention kernels ({k['dtype']}, {'meaningful' if k['meaningful'] else 'NOT meaningful: CPU smoke'}"
             f"{stopped}):",
             "", "| shape | pass | impl | backend | ms | TFLOP/s | GB/s | vs XLA | vs cuDNN |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
    for r in k["rows"]:
        lines.append(f"| {r['shape']} | {r['pass']} | {r['impl']} | {r.get('backend', '-')} | {f(r.get('ms'), 3)} | "
                     f"{f(r.get('tflops'), 1)} | {f(r.get('gbs'), 0)} | {f(r.get('speedup_vs_xla'))} | "
                     f"{f(r.get('speedup_vs_cudnn'))} |")
    return "\n".join(lines)


def train_markdown(path: pathlib.Path, name: str) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("step", 0) > 1 and "step_time_s" in r]
    if not rows:
        return f"Train step ({name}): no timed steps in {path.name}."
    med = lambda key: statistics.median(r[key] for r in rows if r.get(key) is not None) \
        if any(r.get(key) is not None for r in rows) else None
    mfu, tps, st = med("mfu"), med("tokens_per_s"), med("step_time_s")
    return (f"Train step ({name}, steps {rows[0]['step']}-{rows[-1]['step']}): step {st:.3f} s, "
            f"{tps if tps is None else round(tps)} tokens/s, MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}.")


def section(out_dir: pathlib.Path, note: str = "") -> str:
    out_dir = pathlib.Path(out_dir)
    parts = [f"### {datetime.date.today().isoformat()}: `launch/gpu_bench.sh`{' (' + note + ')' if note else ''}", ""]
    kernels = out_dir / "kernels" / "kernels.json"
    parts.append(kernels_markdown(json.loads(kernels.read_text())) if kernels.exists() else "Kernels: not run.")
    infers = [json.loads(p.read_text()) for p in sorted(out_dir.glob("infer_*/infer.json"))]
    for res in infers:
        parts += ["", infer_markdown(res)]
    if any(paper_row(res) is not None for res in infers):
        parts += ["", "Against the paper's latency (its 40 reasoning tokens and 5 flow steps; ours from the "
                  "per-token and per-step p50 above):", "", paper_markdown(infers)]
    for p in sorted(out_dir.glob("train*/metrics.jsonl")):
        parts += ["", train_markdown(p, p.parent.name)]
    return "\n".join(parts) + "\n"


def append(out_dir, docs) -> str:
    text = section(out_dir)
    with open(docs, "a") as f:
        f.write("\n" + text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("docs")
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    text = section(pathlib.Path(a.out_dir), a.note)
    with open(a.docs, "a") as f:
        f.write("\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
