"""html_to_text: the plain-text part Herald derives from an email's HTML."""

import pytest

from herald.delivery.html_text import html_to_text


def test_links_keep_their_url_after_the_text():
    html = '<p>Track your order <a href="https://shop.test/o/42?a=1&amp;b=2">here</a>.</p>'
    assert html_to_text(html) == "Track your order here (https://shop.test/o/42?a=1&b=2)."


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ('<a href="https://shop.test">https://shop.test</a>', "https://shop.test"),
        ('<a href="https://shop.test/sale"></a>', "https://shop.test/sale"),
        ('<a href="mailto:help@shop.test">help@shop.test</a>', "help@shop.test"),
        ('<a href="mailto:help@shop.test?subject=Hi">Write us</a>', "Write us (help@shop.test)"),
        ('<a href="#top">Back to top</a>', "Back to top"),
        ("<a>No target</a>", "No target"),
        (
            '<a href="https://shop.test/x"><img src="b.png" alt="Shop now"></a>',
            "Shop now (https://shop.test/x)",
        ),
    ],
)
def test_a_link_shows_its_url_once_and_only_when_it_helps(html, text):
    assert html_to_text(html) == text


def test_block_elements_and_br_break_lines_paragraphs_leave_one_blank_line():
    html = (
        "<h1>Big sale</h1><p>First line<br>second line</p>"
        "<div>a block</div><div>another block</div><p>Last<br><br><br><br>words</p>"
    )
    assert html_to_text(html) == (
        "Big sale\n\nFirst line\nsecond line\n\na block\nanother block\n\nLast\n\nwords"
    )


def test_script_style_and_title_are_dropped():
    html = (
        "<html><head><title>Newsletter</title><style>p { color: red }</style></head>"
        "<body><script>track('open')</script><p>Visible</p></body></html>"
    )
    assert html_to_text(html) == "Visible"


def test_an_unclosed_head_does_not_hide_the_body():
    assert html_to_text("<html><head><meta charset=utf-8><body><p>Hello</p>") == "Hello"


def test_whitespace_collapses_and_entities_are_unescaped():
    html = "<p>  Caf&eacute;\n\n   &amp;   <b>Bar</b>&nbsp;&lt;3 &#x1F600;  </p>"
    assert html_to_text(html) == "Café & Bar <3 \U0001f600"


def test_inline_elements_join_words_without_adding_spaces():
    assert html_to_text("<p>Only <b>to</b>day: 50<span>%</span> off</p>") == "Only today: 50% off"


def test_lists_and_tables_read_line_by_line():
    html = (
        "<ul><li>Shoes</li><li>Socks</li></ul>"
        "<table><tr><th>Item</th><th>Price</th></tr><tr><td>Shoes</td><td>$90</td></tr></table>"
    )
    assert html_to_text(html) == "- Shoes\n- Socks\n\nItem Price\nShoes $90"


def test_preformatted_text_keeps_its_layout():
    assert html_to_text("<p>Code:</p><pre>a = 1\n  b = 2</pre>") == "Code:\n\na = 1\n  b = 2"


def test_plain_text_and_empty_input_pass_through():
    assert html_to_text("Just words,   no tags") == "Just words, no tags"
    assert html_to_text("") == ""
    assert html_to_text("<p> </p><div></div>") == ""
