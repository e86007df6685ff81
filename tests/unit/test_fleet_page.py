"""operate/fleet_page: the static page escapes every text from a report and allows no script.
(tests/integration/test_fleet.py loads a real one in headless Chromium.)"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

from agent.operate.fleet_page import STYLE, render_page
from tests.unit.test_fleet import found, view

HOSTILE = ['<script>document.title="PWNED"</script>', '"><img src=x onerror=alert(1)>',
           "</pre></td></tr></table><iframe src=//evil>", "' onmouseover='x", "\x00\x1b[31m"]


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def hostile_page() -> str:
    text = " ".join(HOSTILE)
    plan = {"id": text, "action": "wait", "mode": "approve", "rule": text, "reason": text,
            "approved_by": None}
    report = {"plan": plan, "paused": {"by": text, "at": text, "reason": text},
              "held": {"apply_id": text, "by": text, "at": text},
              "source_refused": text,
              "changes": [{"play": text, "role": text, "task": text, "module": text,
                           "diff": "\n".join(f"-{h}" for h in HOSTILE), "check_blind": False}],
              "checked_by": text}
    v = view(found(text, "drifted", message=text, report=report,
                   apply={"plan_id": text, "result": text, "approved_by": text,
                          "finished": text, "undo_of": text}),
             found("web2", "failed", message=text), inventory={text: [text], "web2": [text]})
    history = [{"sha": "a" * 40, "date": text, "subject": text,
                "trailers": {"Petkeeper-Host": text, "Petkeeper-Status": text}},
               {"sha": "b" * 40, "date": text, "subject": text,
                "trailers": {"Petkeeper-Host": text, "Petkeeper-Plan": text,
                             "Petkeeper-Undo": text}}]
    page = render_page(v, history)
    # the hold, the last apply an undo, and the timeline's undo record: each shown, escaped
    assert page.count("held by undo of") == 1 and page.count("undo of") == 2
    assert "<td>undo</td>" in page
    return page


def test_no_text_from_a_report_becomes_markup():
    page = hostile_page()

    names = {tag for tag, _ in tags_of(page)}
    assert not names & {"script", "img", "iframe", "object", "embed", "base", "form", "link"}
    assert all(not k.startswith("on") for _, attrs in tags_of(page) for k in attrs)
    assert "&lt;script&gt;document.title=&quot;PWNED&quot;&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\x00" not in page and "\x1b" not in page


def test_the_policy_allows_the_pages_own_style_and_nothing_else():
    page = hostile_page()

    [(_, meta)] = [(t, a) for t, a in tags_of(page)
                   if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    policy = dict(part.strip().split(" ", 1) for part in str(meta["content"]).split(";"))
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    assert policy == {"default-src": "'none'", "style-src": f"'sha256-{digest}'",
                      "img-src": "'none'", "base-uri": "'none'", "form-action": "'none'"}
    assert re.search(r"<style>(.*?)</style>", page, re.S).group(1) == STYLE  # type: ignore[union-attr]
    assert page.index("Content-Security-Policy") < page.index("<style>")
    assert "http://" not in page.replace("http-equiv", "") and "https://" not in page


def test_the_page_has_every_host_its_status_its_diffs_and_the_timeline():
    v = view(found("alpha"), found("beta", "drifted"), found("gamma", "unreachable",
                                                             message="ssh: refused"))
    history = [{"sha": "b" * 40, "date": "2026-11-25T11:00:00+00:00",
                "subject": "beta: drifted (1 change)",
                "trailers": {"Petkeeper-Host": "beta", "Petkeeper-Status": "drifted"}}]

    page = render_page(v, history)

    for host, status in (("alpha", "clean"), ("beta", "drifted"), ("gamma", "unreachable")):
        assert f"<strong>{host}</strong>" in page and f'id="status-{status}"' in page
    assert '<span class="del">-a</span>' in page and '<span class="add">+b</span>' in page
    assert "ssh: refused" in page and "beta: drifted (1 change)" in page
    order = [page.index(f'id="status-{s}"') for s in ("unreachable", "drifted", "clean")]
    assert order == sorted(order)  # worst first
