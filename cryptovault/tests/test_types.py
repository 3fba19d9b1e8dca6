"""The types are checked: mypy (``make typecheck``, with the project's configuration)
rejects a call that gives a service the wrong type, and a service left unannotated."""

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def _mypy(tmp_path: Path, source: str, name: str = "uses_a_service.py") -> tuple[str, int]:
    module = tmp_path / name
    module.parent.mkdir(exist_ok=True)
    module.write_text(source)
    stdout, stderr, status = api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            # Shared with `make typecheck`: the project's modules come from the cache.
            "--cache-dir",
            str(ROOT / "var" / "mypy"),
            str(module),
        ]
    )
    return stdout + stderr, status


def test_a_wrong_argument_type_to_a_service_fails(tmp_path):
    output, status = _mypy(
        tmp_path,
        "from markets.services import coins_seed\n\ncoins_seed(coin_ids=5)\n",
    )
    assert status == 1, output
    assert 'Argument "coin_ids" to "coins_seed" has incompatible type "int"' in output
    assert "[arg-type]" in output


def test_the_right_type_passes(tmp_path):
    output, status = _mypy(
        tmp_path,
        "from markets.services import coins_seed\n\ncoins_seed(coin_ids=['bitcoin'])\n",
    )
    assert status == 0, output


def test_a_service_module_must_annotate_its_functions(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    output, status = _mypy(
        tmp_path, "def thing_make(*, name):\n    return name\n", name="app/services.py"
    )
    assert status == 1, output
    assert "[no-untyped-def]" in output
