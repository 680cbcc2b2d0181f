"""One `ar1 rl` run on one device, shared by the RL end-to-end tests (settings: rl_fixtures.py)."""

import contextlib
import io

import pytest

from rl_fixtures import CLI_ARGS


@pytest.fixture(scope="session")  # once per xdist worker: the modules using it share the group "rl_run"
def rl_cli_run(tmp_path_factory):
    """`ar1 rl` (in this process, one device) for 2 steps: (exit code, stdout, run directory)."""
    from ar1_jax import cli

    workdir = tmp_path_factory.mktemp("rl_cli") / "a"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([*CLI_ARGS, "--workdir", str(workdir)])
    return code, out.getvalue(), workdir
