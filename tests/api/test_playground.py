"""The playground at / and the API docs at /docs, /redoc, driven in a real headless browser.

Debian's chromium through Playwright (never ``playwright install``: no browser downloads here).
Every request the browser makes is recorded; the pages must work with nothing but this server's
origin (air-gapped deployments), and must log no console errors (a CSP violation is one).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from conftest import TEST_DTYPE, LiveServer, app_client, require
from playwright.sync_api import expect, sync_playwright

QUERY = "how do I list open files"
PASSAGES = [
    "lsof lists open files and the processes that opened them",
    "the weather in Paris is mild in spring",
    "ls lists directory contents",
    "open(2) opens a file and returns a descriptor",
    "tar stores files in an archive",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = shutil.which("chromium")
    require(chromium is not None, "no chromium for the browser test", "apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


class Page:
    """A fresh page that records every request's URL and every console error."""

    def __init__(self, browser, base: str):
        self.page = browser.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.base = base

    def foreign(self) -> list[str]:
        return [
            u
            for u in self.requests
            if not (u.startswith(self.base + "/") or u.startswith("data:") or u.startswith("blob:"))
        ]

    def close(self) -> None:
        self.page.close()


@pytest.fixture(scope="module")
def two_models(bert_ce_dir, bert_bi_dir) -> Iterator[LiveServer]:
    with LiveServer(model=f"ce={bert_ce_dir},bi={bert_bi_dir}") as server:
        yield server


def ranked_in_dom(page) -> list[tuple[int, float]]:
    items = page.locator("#results li.result")
    return [
        (int(items.nth(i).get_attribute("data-index")), float(items.nth(i).get_attribute("data-logit")))
        for i in range(items.count())
    ]


def fill_and_rank(page, query: str, passages: list[str]) -> None:
    page.fill("#query", query)
    page.fill("#passages", "\n".join(passages))
    page.click("#rank")


def test_playground_ranks_with_each_served_model(browser, two_models):
    view = Page(browser, two_models.url)
    page = view.page
    page.goto(two_models.url + "/")
    expect(page.locator("#model option")).to_have_count(2)
    assert page.locator("#model option").all_inner_texts() == ["ce", "bi"]  # --model order
    for model in ("ce", "bi"):
        page.select_option("#model", model)
        fill_and_rank(page, QUERY, PASSAGES)
        page.wait_for_selector(f"#results li.result >> nth={len(PASSAGES) - 1}")
        shown = ranked_in_dom(page)
        api = httpx.post(
            two_models.url + "/v1/ranking",
            json={"model": model, "query": {"text": QUERY}, "passages": [{"text": t} for t in PASSAGES]},
        ).json()
        assert [i for i, _ in shown] == [r["index"] for r in api["rankings"]]
        assert [lg for _, lg in shown] == pytest.approx([r["logit"] for r in api["rankings"]], abs=1e-6)
        # each result shows its passage's own text, best first
        texts = page.locator("#results li.result .passage").all_inner_texts()
        assert texts == [PASSAGES[r["index"]] for r in api["rankings"]]
        page.locator("#results").evaluate("el => el.replaceChildren()")  # next model's answer is new
    # bars: the best passage's bar is full, the worst's is the shortest
    fill_and_rank(page, QUERY, PASSAGES)
    page.wait_for_selector(f"#results li.result >> nth={len(PASSAGES) - 1}")
    widths = [
        float(w.rstrip("%"))
        for w in page.eval_on_selector_all("#results .bar > div", "els => els.map(e => e.style.width)")
    ]
    assert widths[0] == 100.0 and widths[-1] == 5.0 and widths == sorted(widths, reverse=True)
    assert view.foreign() == [] and view.errors == []
    view.close()


def test_playground_top_n_and_server_errors(browser, two_models):
    view = Page(browser, two_models.url)
    page = view.page
    page.goto(two_models.url + "/")
    expect(page.locator("#model option")).to_have_count(2)
    page.fill("#top-n", "2")
    fill_and_rank(page, QUERY, PASSAGES)
    page.wait_for_selector("#results li.result >> nth=1")
    assert page.locator("#results li.result").count() == 2
    # a passage over the server's character limit: the server's own 413 message is shown, nothing ranked
    page.fill("#top-n", "")
    page.locator("#results").evaluate("el => el.replaceChildren()")
    fill_and_rank(page, QUERY, ["x" * 100_001])
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert message.startswith("413:") and "100000" in message
    assert page.locator("#results li.result").count() == 0
    assert view.foreign() == []
    view.close()


def test_playground_with_api_key(browser, bert_ce_dir):
    with LiveServer(model=str(bert_ce_dir), api_key="sesame") as server:
        view = Page(browser, server.url)
        page = view.page
        page.goto(server.url + "/")
        page.wait_for_selector("#key-row:not([hidden])")  # /v1/models answered 401: the key field shows
        fill_and_rank(page, QUERY, PASSAGES)
        page.wait_for_selector("#error:not([hidden])")
        assert page.inner_text("#error").startswith("401:")
        page.fill("#api-key", "sesame")
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#model option")).to_have_count(1)
        page.click("#rank")
        page.wait_for_selector(f"#results li.result >> nth={len(PASSAGES) - 1}")
        assert page.is_hidden("#error")
        # the browser's 401 responses are console errors by Chromium's design; nothing else may be
        assert all("401" in e for e in view.errors), view.errors
        assert view.foreign() == []
        view.close()


@pytest.mark.parametrize(
    "path, ready, expect",
    [
        ("/docs", ".swagger-ui .opblock-summary-path", "/v1/ranking"),
        ("/redoc", "[role=menuitem], .menu-content li", "ranking"),
    ],
)
def test_api_docs_render_offline(browser, two_models, path, ready, expect):
    view = Page(browser, two_models.url)
    page = view.page
    page.goto(two_models.url + path)
    page.wait_for_selector(ready, timeout=30_000)
    assert expect in page.content()
    assert "rankserve" in page.title()
    assert view.foreign() == [], view.foreign()
    assert view.errors == [], view.errors
    # the bundles came from this server
    assert any(u.endswith(".js") and "/ui/vendor/" in u for u in view.requests)
    view.close()


@pytest.mark.parametrize("route", ["/v1/ranking", "/v1/embeddings", "/v1/rerank", "/rerank"])
def test_swagger_try_it_out_default_body_works(browser, two_models, route):
    """What a newcomer does first in /docs: open a route, "Try it out", "Execute" with the body as
    Swagger fills it in. It must answer 200 (it used to send model "string", top_k and top_n 0)."""
    view = Page(browser, two_models.url)
    page = view.page
    page.goto(two_models.url + "/docs")
    block = page.locator(".opblock-post").filter(has=page.locator(f'.opblock-summary-path[data-path="{route}"]')).first
    block.locator(".opblock-summary").click()
    block.locator(".try-out__btn").click()
    body = block.locator("textarea.body-param__text").input_value()
    assert "string" not in body, body  # the schema's example, not type placeholders
    block.locator(".execute").click()
    status = block.locator(".live-responses-table tr.response td.response-col_status").first
    expect(status).to_have_text("200", timeout=30_000)
    view.close()


def test_pages_carry_a_same_origin_policy_and_no_ui_turns_them_off():
    with app_client(warmup=False, **TEST_DTYPE) as client:
        for path in ("/", "/docs", "/redoc"):
            r = client.get(path)
            assert r.status_code == 200
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert "http://" not in r.text and "https://" not in r.text  # no remote asset in the page
        assert client.get("/ui/vendor/redoc.standalone.js").status_code == 200
        assert client.get("/ui/static/playground.js").status_code == 200
    with app_client(warmup=False, ui=False, **TEST_DTYPE) as client:
        for path in ("/", "/docs", "/redoc", "/ui/static/playground.js"):
            assert client.get(path).status_code == 404
        assert client.get("/openapi.json").status_code == 200  # the schema stays for API clients
