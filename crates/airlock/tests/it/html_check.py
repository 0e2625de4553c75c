#!/usr/bin/env python3
"""A parser-based check of a page's structure (Python's html.parser): elements nest and close,
ids are unique, the document names its language, has one <h1>, every form control has a label,
every table has header cells, and no inline script or style attribute is used (the page's CSP
forbids them). Reads HTML files named on the command line; prints problems, exits 1 if any."""

import sys
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# SVG elements written self-closed in the page.
SELF_CLOSED = {"line", "circle", "rect", "polygon", "path"}


class Check(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.ids, self.problems = [], set(), []
        self.h1 = 0
        self.html_lang = False
        self.tables, self.headers = 0, 0
        self.label_depth = 0
        self.controls_unlabelled = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html" and attrs.get("lang"):
            self.html_lang = True
        if "id" in attrs:
            if attrs["id"] in self.ids:
                self.problems.append(f"duplicate id {attrs['id']}")
            self.ids.add(attrs["id"])
        if "style" in attrs or any(name.startswith("on") for name in attrs):
            self.problems.append(f"inline style or handler on <{tag}>")
        if tag == "script" and "src" not in attrs:
            self.problems.append("inline <script>")
        if tag == "h1":
            self.h1 += 1
        if tag == "table":
            self.tables += 1
        if tag == "th":
            self.headers += 1
        if tag == "label":
            self.label_depth += 1
        if tag in ("select", "textarea") or (tag == "input" and attrs.get("type") not in ("hidden", "submit")):
            if self.label_depth == 0 and not attrs.get("aria-label"):
                self.controls_unlabelled += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID and tag not in SELF_CLOSED:
            self.problems.append(f"<{tag}/> is not a void element")

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag == "label":
            self.label_depth -= 1


def check(text):
    parser = Check()
    parser.feed(text)
    parser.close()
    problems = list(parser.problems)
    if parser.stack:
        problems.append(f"unclosed: {parser.stack}")
    if not parser.html_lang:
        problems.append("<html> has no lang")
    if parser.h1 != 1:
        problems.append(f"{parser.h1} <h1> elements")
    if parser.tables and parser.headers == 0:
        problems.append("a table without header cells")
    if parser.controls_unlabelled:
        problems.append(f"{parser.controls_unlabelled} form controls without a label")
    return problems


def main():
    failed = False
    for path in sys.argv[1:]:
        for problem in check(open(path, encoding="utf-8").read()):
            print(f"{path}: {problem}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
