"""The kit installed, not checked out: the repository's address lives in one place
([project.urls] of pyproject.toml) and every notebook's Colab badge and install cell use
it (tools/repo_url.py writes them), and a wheel built from the project carries the
committed results, so the notebooks that read them (05 to 08) run from the installed copy
in a folder far from the checkout, with the checkout off the path."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# a notebook that reads committed results calls one of these (05, 07 and 08 at least)
READS = re.compile(r"\b(load_results|load_benchmark|results_root|latest_run|list_runs|committed)\(")
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{name})")


def project_url(root: Path = REPO) -> str:
    """`Repository` under [project.urls], read with a regex (no tomllib on Python 3.10)."""
    text = (root / "pyproject.toml").read_text()
    table = re.search(r"(?ms)^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text)
    assert table, "pyproject.toml has no [project.urls]"
    url = re.search(r'(?m)^Repository\s*=\s*"([^"]+)"', table.group(1))
    assert url, "[project.urls] has no Repository"
    return url.group(1)


def repo_url_tool():
    spec = importlib.util.spec_from_file_location("repo_url", REPO / "tools" / "repo_url.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the address

def test_project_urls_give_the_repository_on_github():
    url = project_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'(?m)^Homepage\s*=\s*"{re.escape(url)}"', text)
    try:
        import tomllib
    except ImportError:  # Python 3.10: the regex above is the check
        return
    urls = tomllib.loads(text)["project"]["urls"]
    assert urls["Repository"] == url == urls["Homepage"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_opens_in_colab_and_installs_from_the_repository(path):
    url = project_url()
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    badge = BADGE.format(owner_repo=url.removeprefix("https://github.com/"), name=path.name)
    assert first.cell_type == "markdown" and first.source.startswith(badge), \
        f"{path.name}: first cell lacks {badge}"
    install = f'%pip install -q "duat @ git+{url}"'
    guarded = [c for c in nb.cells if c.cell_type == "code"
               and re.search(r'(?m)^if "google\.colab" in sys\.modules:.*\n(    .*\n)*    '
                             + re.escape(install) + "$", c.source)]
    assert guarded, f'{path.name}: no cell `{install}` under `if "google.colab" in sys.modules:`'
    assert "import sys" in guarded[0].source.split("google.colab")[0]
    for cell in nb.cells:  # no other address anywhere
        for found in re.findall(r'duat @ git\+[^"\s]+', cell.source):
            assert found == f"duat @ git+{url}", f"{path.name}: {found}"
        for found in re.findall(r"colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/", cell.source):
            assert f"https://github.com/{found}" == url, f"{path.name}: {found}"


def test_the_readme_installs_from_the_same_address_and_says_how_a_fork_changes_it():
    text = (REPO / "README.md").read_text()
    url = project_url()
    assert f'pip install "duat @ git+{url}"' in text
    assert set(re.findall(r'duat @ git\+[^"\s]+', text)) == {f"duat @ git+{url}"}
    assert "python tools/repo_url.py set https://github.com/" in text and "[project.urls]" in text
    assert repo_url_tool().check(REPO) == []


def test_the_tool_rewrites_badges_and_install_cells_only_and_idempotently(tmp_path, capsys):
    tool = repo_url_tool()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    # one more notebook with neither a badge nor an install cell
    bare = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · bare"),
                                           nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(bare, tmp_path / "notebooks" / "99_bare.ipynb")
    before = {p.name: nbformat.read(p, as_version=4) for p in (tmp_path / "notebooks").glob("*.ipynb")}
    assert tool.main(["--root", str(tmp_path), "check"]) == 1
    assert "99_bare.ipynb: first cell lacks the badge" in capsys.readouterr().out

    new = "https://github.com/someone/duat-fork"
    assert tool.main(["--root", str(tmp_path), "set", new + ".git"]) == 0    # normalized
    assert project_url(tmp_path) == new
    assert tool.check(tmp_path) == []
    for path in (tmp_path / "notebooks").glob("*.ipynb"):
        old, nb = before[path.name], nbformat.read(path, as_version=4)
        if path.name == "99_bare.ipynb":
            assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
            assert nb.cells[0].source.startswith(BADGE.format(owner_repo="someone/duat-fork", name=path.name))
            assert f'%pip install -q "duat @ git+{new}"' in nb.cells[1].source
            continue
        assert len(nb.cells) == len(old.cells)
        for a, b in zip(old.cells, nb.cells):
            assert a.get("outputs") == b.get("outputs") and a.metadata == b.metadata and a.id == b.id
            if a.source != b.source:   # only the badge and the pip line changed
                assert b.source == a.source.replace("duat-kit/duat", "someone/duat-fork")
        assert nb.metadata == old.metadata
    readme = (tmp_path / "README.md").read_text()
    assert f'pip install "duat @ git+{new}"' in readme and "duat-kit/duat" not in readme

    stamp = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    assert tool.set_url(tmp_path, new) == []                                   # idempotent
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()} == stamp

    # a hand edit of the one line in pyproject, then `set` without an address
    text = (tmp_path / "pyproject.toml").read_text().replace(
        'Repository = "https://github.com/someone/duat-fork"', 'Repository = "https://github.com/other/duat"')
    (tmp_path / "pyproject.toml").write_text(text)
    assert tool.main(["--root", str(tmp_path), "check"]) == 1
    capsys.readouterr()
    assert tool.main(["--root", str(tmp_path), "set"]) == 0
    assert tool.check(tmp_path) == [] and "other/duat" in (tmp_path / "README.md").read_text()

    # bad input: one error line, nothing changed
    stamp = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert tool.main(["--root", str(tmp_path), "set", "https://gitlab.com/x/y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tools/repo_url.py set: error:") and "GitHub" in err[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == stamp


# ----------------------------------------------------------------------------- the wheel

SITECUSTOMIZE = '''"""Test isolation: the checkout's editable install and the checkout itself leave the path
(all but the virtual environment, which may lie inside it), so that only the wheel
installed next to this file's folder can be imported as duat."""
import os
import sys

REPO = {repo!r}


def _under(entry, folder):
    return entry == folder or entry.startswith(folder + os.sep)


def _inside(entry):
    entry = os.path.realpath(str(entry)) if entry else os.getcwd()
    return "__editable__" in entry or (_under(entry, REPO) and not _under(entry, os.path.realpath(sys.prefix)))


sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in (getattr(h, "__module__", "") or "")]
sys.path[:] = [p for p in sys.path if not _inside(p)]
sys.path_importer_cache.clear()
'''

WHERE = '''import json, os, sys
import duat, duat.locations as L
print(json.dumps({"duat": duat.__file__, "packaged": str(L.packaged()), "in_checkout": L.in_checkout(),
                  "output": str(L.output_dir("x")), "prefix": sys.prefix,
                  "path": [os.path.realpath(p) if p else os.getcwd() for p in sys.path],
                  "meta_path": [repr(f) for f in sys.meta_path]}))
'''

CHECK_CELL = '''import sys
from pathlib import Path

import duat, duat.locations

SITE, REPO, VENV = Path({site!r}), Path({repo!r}), Path(sys.prefix).resolve()
assert Path(duat.__file__).is_relative_to(SITE), duat.__file__
assert duat.locations.packaged().is_relative_to(SITE) and not duat.locations.in_checkout()
inside = [p for p in sys.path if Path(p).resolve().is_relative_to(REPO)]
assert not [p for p in inside if not Path(p).resolve().is_relative_to(VENV)], sys.path
assert not [f for f in sys.meta_path if "__editable__" in repr(f)], sys.meta_path'''


def _build_wheel(tmp: Path) -> Path:
    """The project's sources as a clean tree (pyproject, README, duat/), built offline."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "duat", src / "duat", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # what a checkout may hold but must not ship: a local quick benchmark, an unfinished run
    quick = src / "duat" / "results" / "bench" / "cpu-quick-2026-01-01-000000"
    quick.mkdir(parents=True, exist_ok=True)
    (quick / "results.json").write_text("{}")
    (src / "duat" / "results" / "data-scale" / "partial.json").write_text("{}")
    out = tmp / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, text=True, timeout=600, cwd=tmp)
    (wheel,) = out.glob("duat-*.whl")
    return wheel


def reads_committed() -> list[str]:
    """The notebooks whose code reads committed results."""
    found = [p.name for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))
             if any(c.cell_type == "code" and READS.search(c.source)
                    for c in nbformat.read(p, as_version=4).cells)]
    assert {"05_latency_vs_depth.ipynb", "07_data_scale_and_diversity.ipynb",
            "08_finetuning_pretrained_vit.ipynb"} <= set(found), found
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """One wheel built from the checkout, for every test of this section."""
    return _build_wheel(tmp_path_factory.mktemp("wheel-build"))


def machine_paths() -> list[str]:
    """Absolute paths that belong to this machine: the checkout, the environments, home."""
    found = {str(REPO), sys.prefix, sys.base_prefix, os.path.realpath(sys.executable),
             str(Path.home()) + "/"}
    return sorted(p for p in found if len(p) > 2)


# Absolute paths under the usual roots of a machine's own files, whoever built the file
# (a visit log from a lent GPU machine, say). /tmp is left out: usage examples name it.
ABSOLUTE = re.compile(rb"(?<![\w.~-])/(?:home|root|opt|work|Users|mnt|srv)/[\w.+-]")


@pytest.mark.slow
def test_no_file_in_the_wheel_names_a_machines_paths(wheel):
    mine = [p.encode() for p in machine_paths()]
    leaks = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            leaks += [f"{name}: {p.decode()}" for p in mine if p in data]
            leaks += [f"{name}: {m.group().decode()}..." for m in ABSOLUTE.finditer(data)]
    assert not leaks, "\n".join(leaks[:20])


def test_the_path_scan_finds_a_leak():
    assert ABSOLUTE.search(b'"executable": "/opt/torch/.venv/bin/python3"')
    assert ABSOLUTE.search(b"in /work/main") and ABSOLUTE.search(b"to $OUT=/root/out")
    assert not ABSOLUTE.search(b"--out /tmp/rerun, see docs/method.md and ./runs/x")
    assert str(REPO) in machine_paths()


@pytest.mark.slow
def test_the_installed_wheel_runs_the_notebooks_that_read_committed_results(tmp_path, wheel):
    assert not tmp_path.resolve().is_relative_to(REPO)
    notebooks = reads_committed()

    # what the wheel holds: the package and every committed result, nothing else
    names = set(zipfile.ZipFile(wheel).namelist())
    assert all(n.startswith(("duat/", "duat-0.1.0.dist-info/")) for n in names), sorted(names)
    committed = {p.relative_to(REPO).as_posix() for p in (REPO / "duat" / "results").rglob("*")
                 if p.is_file() and "-quick-" not in p.as_posix() and not p.name.startswith("partial")}
    assert "duat/results/bench/cpu-2026-11-28/results.json" in committed
    assert {".png", ".csv", ".json"} <= {Path(n).suffix for n in committed}
    assert committed <= names, sorted(committed - names)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "duat").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert not [n for n in names if "-quick-" in n or "partial" in n or "__pycache__" in n
                or n.startswith(("duat/results/__init__", "tests/", "notebooks/"))]
    assert wheel.stat().st_size < 5_000_000

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    isolate = tmp_path / "isolate"
    isolate.mkdir()
    (isolate / "sitecustomize.py").write_text(SITECUSTOMIZE.format(repo=str(REPO)))
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    for name in notebooks:
        shutil.copy(NOTEBOOK_DIR / name, nb_dir / name)
    shutil.copy(NOTEBOOK_DIR / "sanitize.cfg", nb_dir / "sanitize.cfg")
    (nb_dir / "pytest.ini").write_text("[pytest]\n")   # not the project's configuration
    check = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        CHECK_CELL.format(site=str(site), repo=str(REPO)))])
    check.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                    "name": "python3"}
    nbformat.write(check, nb_dir / "00_installed_copy.ipynb")   # runs first: in the kernel itself

    env = {k: v for k, v in os.environ.items()
           if k not in ("DUAT_RESULTS", "PYTHONPATH", "PYTEST_ADDOPTS", "MPLBACKEND")}
    env.update(PYTHONPATH=os.pathsep.join([str(isolate), str(site)]), DUAT_PROFILE="quick",
               PYTHONDONTWRITEBYTECODE="1")

    # 1. the same environment imports the installed copy, with the checkout off the path
    where = subprocess.run([sys.executable, "-c", WHERE], env=env, cwd=nb_dir, capture_output=True,
                           text=True, timeout=300, check=True)
    seen = json.loads(where.stdout)
    assert Path(seen["duat"]).is_relative_to(site) and Path(seen["packaged"]).is_relative_to(site)
    assert seen["in_checkout"] is False and Path(seen["output"]) == nb_dir.resolve() / "results" / "x"
    venv = Path(seen["prefix"]).resolve()   # the environment's own packages may lie in the checkout
    inside = [p for p in seen["path"] if Path(p).resolve().is_relative_to(REPO)]
    assert not [p for p in inside if not Path(p).resolve().is_relative_to(venv)], seen["path"]
    assert not (venv / "lib").is_dir() or not list(venv.glob("lib/python*/site-packages/duat"))
    assert not [f for f in seen["meta_path"] if "__editable__" in f]

    # 2. the notebooks, under nbval, from the folder of copies
    shipped = sorted(p for p in (site / "duat" / "results").rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "--nbval-sanitize-with",
         "sanitize.cfg", "--nbval-cell-timeout", "600", "-p", "no:cacheprovider", "--rootdir",
         str(nb_dir), "-c", str(nb_dir / "pytest.ini"), "-q", "-rfE", "00_installed_copy.ipynb",
         *notebooks],
        env=env, cwd=nb_dir, capture_output=True, text=True, timeout=1800)
    first = max(proc.stdout.find(" FAILURES "), 0)   # the first failure in full, then the summary
    assert proc.returncode == 0, (proc.stdout[first:first + 6000] + "\n...\n" + proc.stdout[-2500:]
                                  + proc.stderr[-2000:])
    assert sorted(p for p in (site / "duat" / "results").rglob("*")) == shipped  # nothing written there
