"""rl/report.py: the before/after tables read from `ar1 rl --heldout` run directories."""

import json

import numpy as np
import pytest

from ar1_jax.rl import report


def _run_dir(root, name, seed, method, before, after, kls):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"seed": seed, "rl": {"expert_loss": method, "token_loss": "grpo"}}))
    # Logged every 2 steps (and at step 1): step_time_s is the mean over the steps since the last row.
    rows = [{"step": 1 if i == 0 else 2 * i, "kl": kl, "rollout_s": 3.0, "update_s": None if i == 0 else 1.5,
             "step_time_s": 10.0 if i == 0 else 4.5} for i, kl in enumerate(kls)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for when, values in (("before", before), ("after", after)):
        if values is not None:
            (d / f"heldout_{when}.json").write_text(json.dumps(dict(zip((k for k, _, _ in report.COLUMNS), values))))
    return d


def test_tables_of_runs_and_of_methods(tmp_path):
    rng = np.random.default_rng()
    n = len(report.COLUMNS)
    before = rng.uniform(0.2, 0.8, n).round(3).tolist()
    ups = [rng.uniform(0.01, 0.1, n).round(2) for _ in range(3)]  # a mean of hundredths is never a .3f tie
    dirs = []
    for seed, up in enumerate(ups):
        # Each column moves the way its sign calls better.
        after = [b + s * u for b, (_, _, s), u in zip(before, report.COLUMNS, up)]
        dirs.append(_run_dir(tmp_path, f"flow_grpo_s{seed}", seed, "flow_grpo", before, after, [0.01, 0.03, 0.02]))
    dirs.append(_run_dir(tmp_path, "awfm_s0", 0, "awfm", before, None, [0.0]))
    runs = [report.load_run(d) for d in dirs]
    assert runs[0].steps == 4 and runs[0].wall_s == pytest.approx(10.0 + 4.5 * (2 - 1) + 4.5 * (4 - 2))
    assert runs[0].kl_max == 0.03 and runs[0].kl_mean == pytest.approx(0.02)
    assert all(report.improved(r, k, s) for r in runs[:3] for k, _, s in report.COLUMNS)
    assert report.improved(runs[3], "reward/total", 1) is None
    text = report.markdown(runs)
    assert "| awfm_s0 | awfm | 0 | 1 | (no held-out before/after)" in text and "| 0.4 min |" in text  # 23.5 s
    k0 = report.COLUMNS[0][0]
    assert f"{before[0]:.3f} -> {runs[1].after[k0]:.3f}" in text
    mean_delta = np.mean([u[0] for u in ups])
    assert f"| flow_grpo | 3 | {mean_delta:+.3f} (" in text and "better in 3/3" in text


def test_cli_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
