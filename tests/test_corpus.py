"""The corpus cleaners on small fixtures (the registry fetches run in `make demo-quick`)."""

from tstrain.corpus import html_prose, sword_paragraphs


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
