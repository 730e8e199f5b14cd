"""``import dynode`` is light and the package behaves as if imported eagerly.

The command line answers ``--help`` and refuses a bad config file (the ten-line YAML alias bomb
of issue 20) before torch is imported; the first public name used loads everything, and the
public names are what they were (``dn.integrate`` is the function, not the module of that name,
whichever was imported first). Each case runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
                 + ["model: *a8"]) + "\n"


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_dynode_and_the_cli_parser_do_not_import_torch():
    out = run("""
        import sys
        import dynode
        from dynode.cli import build_parser
        build_parser().format_help()
        print(sorted(m for m in ("torch", "xarray", "zarr", "matplotlib", "pydantic") if m in sys.modules))
        print(dynode.__version__)
    """)
    assert out.splitlines()[0] == "[]"


def test_config_check_refuses_an_alias_bomb_before_importing_torch(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    out = run(f"""
        import sys
        from dynode.cli import main
        print(main(["config", "check", {str(path)!r}]), "torch" in sys.modules)
    """)
    assert out.split() == ["2", "False"]


def test_public_names_are_the_eager_ones_whatever_was_imported_first():
    out = run("""
        import inspect
        from dynode.integrate import require_memory  # binds the submodule dynode.integrate first
        from dynode.simulate import simulate as _s
        import dynode as dn
        assert inspect.isfunction(dn.integrate) and dn.integrate.__module__ == "dynode.integrate"
        assert inspect.isfunction(dn.simulate) and inspect.isfunction(dn.convergence)
        assert inspect.ismodule(dn.models) and inspect.ismodule(dn.spec)
        from dynode import Network, RunProtocol, load_model
        names = {}
        exec("from dynode import *", names)
        assert set(dn.__all__) <= set(names) and set(dn.__all__) <= set(dir(dn))
        print("ok")
    """)
    assert out.strip() == "ok"


def test_solvers_by_name_work_from_a_program_that_imported_only_the_core():
    out = run("""
        import torch
        from dynode.integrate import integrate
        from dynode.network import Network
        net = Network()
        net.add_input("x", (2,))
        net.add_population("r", (2,), tau=5.0)
        net.connect("x", "r")
        print(integrate(net, torch.ones(1, 2), t_end=2.0, dt=1.0, solver="rk4").stats.steps)
    """)
    assert out.strip() == "2"


@pytest.mark.parametrize("name", ["nothing", "Networks"])
def test_an_unknown_name_is_an_attribute_error(name):
    out = run(f"""
        import dynode
        try:
            getattr(dynode, {name!r})
        except AttributeError as exc:
            print(exc)
    """)
    assert f"has no attribute {name!r}" in out
