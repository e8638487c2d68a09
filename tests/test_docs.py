"""Every relative link and `#anchor` in README.md and docs/*.md leads somewhere.

Files (images too) must exist; an anchor must be the slug GitHub gives one of
the target page's headings. Web links are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """`text` without fenced code blocks and code spans (their brackets are no links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def heading_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation other than
    '-' and '_' removed, spaces turned into '-'.

    >>> heading_slug("`mmentail-serve`: TensorFlow Serving's REST API")
    'mmentail-serve-tensorflow-servings-rest-api'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text alone
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page`, a repeated heading's with GitHub's `-1`, `-2`."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text()),
                              re.M):
        slug = heading_slug(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def _links(page: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(page.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http(s):, mailto:, ...


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file or anchor is missing, with the reason."""
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_and_anchors_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_guide_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _links(ROOT / "README.md")}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages no reader finds from README.md: {unlinked}"


def test_the_link_check_finds_a_missing_file_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Serving: the `export`\n\n## Title\n\n"
                                   "```\n# not a heading\n```\n![shot](a.md)\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md#serving-the-export) [again](a.md#title-1) [gone](a.md#not-a-heading) "
        "![no image](shot.png) `[code](x.md)` [web](https://example.com/x) [top](#top)\n")
    assert anchors(tmp_path / "a.md") == {"title", "serving-the-export", "title-1"}
    assert broken_links(tmp_path / "a.md") == []
    assert broken_links(tmp_path / "b.md") == [
        "a.md#not-a-heading: no heading with anchor #not-a-heading in a.md",
        "shot.png: no file shot.png", "#top: no heading with anchor #top in b.md"]
