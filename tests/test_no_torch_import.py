"""npvit's runtime never needs PyTorch: the package, every submodule and the CLI work in a
Python where importing torch or timm fails (see tests/no_torch.py for how that is arranged)."""
import textwrap

from no_torch import blocked_imports, run_without_torch


def test_the_hook_really_blocks_torch_and_timm(tmp_path):
    code = textwrap.dedent("""
        for name in ["torch", "timm", "torchvision", "torch.nn.functional"]:
            try:
                __import__(name)
            except ImportError:
                print("blocked", name)
            else:
                raise SystemExit(name + " was importable")
    """)
    out = run_without_torch(["-c", code], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split().count("blocked") == 4
    assert blocked_imports(tmp_path)[:3] == ["torch", "timm", "torchvision"]


def test_import_npvit_and_every_submodule_without_torch(tmp_path):
    # Walk the installed package so modules added later are covered too; __main__ would run
    # the CLI, and is exercised through `python -m npvit` below.
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import npvit
        names = [m.name for m in pkgutil.walk_packages(npvit.__path__, "npvit.")
                 if not m.name.endswith("__main__")]
        for name in names:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "timm", "torchvision"})
        assert not leaked, leaked
        print(len(names), "modules")
    """)
    out = run_without_torch(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "modules" in out.stdout
    # Not even a guarded `try: import torch` that fell back quietly.
    assert blocked_imports(tmp_path) == []


def test_cli_help_without_torch(tmp_path):
    out = run_without_torch(["-m", "npvit", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: npvit" in out.stdout
    assert blocked_imports(tmp_path) == []


def test_every_subcommand_help_without_torch(tmp_path):
    # One interpreter for all subcommands: --help exits with SystemExit(0) after printing.
    code = textwrap.dedent("""
        from npvit.cli import COMMANDS, build_parser
        for name in COMMANDS:
            try:
                build_parser().parse_args([name, "--help"])
            except SystemExit as e:
                assert e.code == 0, (name, e.code)
            print("ok", name)
    """)
    out = run_without_torch(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ok gradcheck" in out.stdout
    assert blocked_imports(tmp_path) == []
