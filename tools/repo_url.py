"""Developer tool: the repository's address lives in one place, `Repository` under
[project.urls] in pyproject.toml; this writes everything that depends on it from there.

    python tools/repo_url.py check                             # exit 1, listing what differs
    python tools/repo_url.py set https://github.com/YOU/duat   # set it, rewrite the rest
    python tools/repo_url.py set                               # after editing pyproject by hand

What depends on it: each notebook's Colab badge in its first cell (a link to
colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/<its file>) and its
install cell (`%pip install -q "duat @ git+URL"`, run only where "google.colab" is in
sys.modules), and the README's `duat @ git+URL` lines and Colab links. `set URL` also sets
Homepage. Notebooks are edited by cell source only (nbformat, outputs and every other cell
untouched); a file is rewritten, atomically, only when it changes, so running it twice
changes nothing the second time. `--root DIR` works on another copy of the project.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRANCH = "main"  # the branch the Colab badges open
GITHUB = re.compile(r"^https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)/([A-Za-z0-9._-]+?)(?:\.git)?/?$")
URLS_TABLE = re.compile(r"(?ms)^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)")
BADGE_IMAGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
BADGE = re.compile(re.escape(BADGE_IMAGE) + r"\(https://colab\.research\.google\.com/github/[^)\s]*\)")
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/")
PIP_URL = re.compile(r'duat @ git\+[^"\s]+')
GUARD = 'if "google.colab" in sys.modules:'
INSTALL_CELL = ('import sys\n\n'
                f'{GUARD}  # Colab only: install the kit from its repository\n'
                '    %pip install -q "duat @ git+{url}"')


class UsageError(ValueError):
    """Bad input: reported as one `error:` line, exit status 2."""


# ----------------------------------------------------------------------------- the address

def normalize(url: str) -> str:
    """https://github.com/OWNER/REPO (no .git, no trailing slash); Colab opens GitHub only."""
    m = GITHUB.match(url.strip())
    if not m:
        raise UsageError(f"{url!r} is not a GitHub repository address (https://github.com/OWNER/REPO); "
                         f"Colab opens notebooks from GitHub only")
    return f"https://github.com/{m.group(1)}/{m.group(2)}"


def _urls_table(text: str) -> re.Match:
    table = URLS_TABLE.search(text)
    if table is None:
        raise UsageError("pyproject.toml has no [project.urls] table")
    return table


def read_url(root: Path = ROOT) -> str:
    """`Repository` under [project.urls] of root/pyproject.toml."""
    table = _urls_table((root / "pyproject.toml").read_text(encoding="utf-8"))
    m = re.search(r'(?m)^Repository\s*=\s*"([^"]*)"', table.group(1))
    if m is None:
        raise UsageError("pyproject.toml's [project.urls] has no Repository = \"...\" line")
    return normalize(m.group(1))


def write_url(root: Path, url: str) -> bool:
    """Set Repository and Homepage under [project.urls]; True if pyproject.toml changed."""
    path = root / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    table = _urls_table(text)
    body = table.group(1)
    for key in ("Homepage", "Repository"):
        line = f'{key} = "{url}"'
        body, n = re.subn(rf'(?m)^{key}\s*=\s*"[^"]*"', line, body)
        if n == 0:  # a missing key: the table's last line
            kept = body.rstrip("\n")
            body = f"{kept}\n{line}{body[len(kept):] or chr(10)}"
    return _write(path, text[:table.start(1)] + body + text[table.end(1):], text)


# ----------------------------------------------------------------------------- derived text

def badge(url: str, notebook: str) -> str:
    owner_repo = url.removeprefix("https://github.com/")
    return (f"{BADGE_IMAGE}(https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/"
            f"notebooks/{notebook})")


def _colab_base(url: str) -> str:
    return f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/"


def _install_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and PIP_URL.search(c.source)]


def fix_notebook(nb, name: str, url: str) -> list[str]:
    """Bring the badge and install cell of notebook object `nb` (file name `name`) in line
    with `url`, in place; returns what was changed (empty: it already was)."""
    import nbformat

    changes = []
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "markdown" and BADGE.search(first.source):
        new = BADGE.sub(badge(url, name), first.source, count=1)
    elif first is not None and first.cell_type == "markdown":
        new = badge(url, name) + "\n\n" + first.source
    else:
        first, new = nbformat.v4.new_markdown_cell(""), badge(url, name)
        nb.cells.insert(0, first)
    if new != first.source:
        first.source = new
        changes.append("badge")
    cells = _install_cells(nb)
    if not cells:
        nb.cells.insert(1, nbformat.v4.new_code_cell(INSTALL_CELL.format(url=url)))
        changes.append("install cell added")
    for cell in cells:
        new = PIP_URL.sub(f"duat @ git+{url}", cell.source)
        if new != cell.source:
            cell.source = new
            changes.append("install cell")
    return changes


def notebook_problems(nb, name: str, url: str) -> list[str]:
    """What differs from `url` in notebook object `nb`, without changing it."""
    problems = []
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown" or badge(url, name) not in first.source:
        problems.append(f"first cell lacks the badge {badge(url, name)}")
    cells = _install_cells(nb)
    wanted = f'%pip install -q "duat @ git+{url}"'
    if not any(GUARD in c.source and wanted in c.source.split(GUARD, 1)[1] for c in cells):
        problems.append(f"no install cell `{wanted}` under `{GUARD}`")
    for cell in nb.cells:
        stale = {m for m in PIP_URL.findall(cell.source) if m != f"duat @ git+{url}"}
        stale |= {m for m in COLAB_LINK.findall(cell.source) if m != _colab_base(url)}
        problems += [f"another address: {m}" for m in sorted(stale)]
    return problems


def fix_readme(text: str, old: str, url: str) -> str:
    text = PIP_URL.sub(f"duat @ git+{url}", text)
    text = COLAB_LINK.sub(_colab_base(url), text)
    return re.sub(re.escape(old) + r"(?![A-Za-z0-9_-])", url, text)  # links into the repository


def readme_problems(text: str, url: str) -> list[str]:
    found = PIP_URL.findall(text)
    problems = [] if found else [f'no `pip install "duat @ git+{url}"` line']
    stale = {m for m in found if m != f"duat @ git+{url}"}
    stale |= {m for m in COLAB_LINK.findall(text) if m != _colab_base(url)}
    return problems + [f"another address: {m}" for m in sorted(stale)]


# ----------------------------------------------------------------------------- files

def _write(path: Path, new: str, old: str) -> bool:
    if new == old:
        return False
    try:
        from duat.storage import atomic_write_text  # the kit's one atomic write
    except ImportError:  # a Python without the kit installed: this checkout's copy
        sys.path.insert(0, str(ROOT))
        from duat.storage import atomic_write_text
    atomic_write_text(path, new)
    return True


def _notebooks(root: Path) -> list[Path]:
    found = sorted((root / "notebooks").glob("*.ipynb"))  # the chapters, then their solutions
    found += sorted((root / "notebooks" / "solutions").glob("*.ipynb"))
    if not found:
        raise UsageError(f"no notebooks in {root / 'notebooks'}")
    return found


def _name(root: Path, path: Path) -> str:
    """The notebook's path under notebooks/, as its Colab link names it."""
    return path.relative_to(root / "notebooks").as_posix()


def _read_nb(path: Path):
    import nbformat

    text = path.read_text(encoding="utf-8")
    return text, nbformat.reads(text, as_version=nbformat.NO_CONVERT)


def check(root: Path = ROOT) -> list[str]:
    """Every mismatch with pyproject's address, as 'file: problem' lines (empty: all agree)."""
    url = read_url(root)
    out = []
    for path in _notebooks(root):
        _, nb = _read_nb(path)
        out += [f"{path.relative_to(root)}: {p}" for p in notebook_problems(nb, _name(root, path), url)]
    readme = root / "README.md"
    out += [f"README.md: {p}" for p in readme_problems(readme.read_text(encoding="utf-8"), url)]
    return out


def set_url(root: Path = ROOT, url: str | None = None) -> list[str]:
    """Write `url` (default: pyproject's own) into pyproject, the notebooks and the README;
    returns 'file: what changed' lines."""
    import nbformat

    old = read_url(root)
    url = normalize(url) if url is not None else old
    changed = [f"pyproject.toml: [project.urls] {url}"] if write_url(root, url) else []
    for path in _notebooks(root):
        text, nb = _read_nb(path)
        what = fix_notebook(nb, _name(root, path), url)
        if what and _write(path, nbformat.writes(nb, version=nbformat.NO_CONVERT) + "\n", text):
            changed.append(f"{path.relative_to(root)}: {', '.join(what)}")
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if _write(readme, fix_readme(text, old, url), text):
        changed.append("README.md: the address")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/repo_url.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the project's folder (default: this checkout)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="list what differs from pyproject's address; exit 1 if anything does")
    p = sub.add_parser("set", help="set the address (default: keep pyproject's) and rewrite the rest")
    p.add_argument("url", nargs="?", help="https://github.com/OWNER/REPO")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check(args.root)
            for line in problems:
                print(line)
            print(f"{len(problems)} problem(s); `python tools/repo_url.py set` rewrites them"
                  if problems else f"every notebook and the README use {read_url(args.root)}")
            return 1 if problems else 0
        changed = set_url(args.root, args.url)
        for line in changed:
            print(line)
        print(f"{len(changed)} file(s) changed; the address is {read_url(args.root)}")
        return 0
    except (UsageError, FileNotFoundError) as err:
        print(f"tools/repo_url.py {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
