"""bmojo.cli and `python -m bmojo`: one entry point for every command."""

import subprocess
import sys


def test_python_m_bmojo_is_the_bmojo_command(subprocess_env):
    """`python -m bmojo` (for machines where the console script is not installed) runs bmojo.cli.main: no command
    is a usage error naming COMMAND, exit 2; a command's bad input is that command's one-line error."""
    run = lambda *argv: subprocess.run([sys.executable, "-m", "bmojo", *argv], capture_output=True, text=True,  # noqa: E731
                                       env=subprocess_env)
    out = run()
    assert out.returncode == 2 and "bmojo: error: the following arguments are required: COMMAND" in out.stderr
    out = run("eval", "--device", "tpu", "missing_run")
    assert out.returncode == 2 and "bmojo eval: error: --device tpu: only cpu and cuda[:N] are supported" in out.stderr
