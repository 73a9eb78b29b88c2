"""GraphiQL in a real browser, with no internet access: it loads from the service alone, under
its Content-Security-Policy, and runs a query with the token written in its Headers tab."""

from __future__ import annotations

import json

from playwright.async_api import Request, Response, expect

from tests.browser.conftest import Browsing
from tests.conftest import make_token

QUERY = "{ kpis { slug } }"


async def open_graphiql(browsing: Browsing) -> None:
    """Open /graphql and wait until GraphiQL has rendered its editors."""
    page = browsing.page
    await page.goto(browsing.url("/graphql"))
    await expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    await expect(page.locator(".graphiql-editor-tool .CodeMirror").last).to_be_visible()


async def replace_text(browsing: Browsing, editor: str, text: str) -> None:
    """Replace what a CodeMirror editor holds, as a person pasting would."""
    page = browsing.page
    await page.locator(editor).click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(text)


def is_introspection(response: Response) -> bool:
    return "IntrospectionQuery" in (response.request.post_data or "")


async def run(browsing: Browsing, persona: str) -> str:
    """Run QUERY with a token of this persona written in the Headers tab; return the answer."""
    page = browsing.page
    headers = json.dumps({"Authorization": f"Bearer {make_token(persona)}"})
    await replace_text(browsing, ".graphiql-query-editor .CodeMirror", QUERY)
    # Once the token is written, GraphiQL fetches the schema with it (completion, docs).
    async with page.expect_response(is_introspection) as schema:
        await replace_text(browsing, ".graphiql-editor-tool .CodeMirror >> visible=true", headers)
    assert (await schema.value).ok
    await page.locator(".graphiql-execute-button").click()
    response = page.locator(".graphiql-response")
    await expect(response).to_contain_text('"kpis"')
    text: str = await response.inner_text()
    return text


async def test_graphiql_answers_a_query_with_the_token_in_its_headers(browsing: Browsing) -> None:
    sent: list[str] = []

    def record(request: Request) -> None:
        if request.method == "POST":
            sent.append(request.headers.get("authorization", ""))

    browsing.page.on("request", record)
    await open_graphiql(browsing)
    answer = await run(browsing, "admin")
    assert '"mttr"' in answer and '"mtta"' in answer
    # The schema, then the query: both with the token.
    assert len(sent) == 2 and all(header.startswith("Bearer ey") for header in sent)
    await browsing.screenshot("graphiql-admin")


async def test_graphiql_with_an_exec_token_shows_no_internal_kpi(browsing: Browsing) -> None:
    await open_graphiql(browsing)
    answer = await run(browsing, "exec")
    assert '"mttr"' in answer
    assert "mtta" not in answer
    await browsing.screenshot("graphiql-exec")


async def test_graphiql_without_a_token_sends_nothing_and_says_what_to_do(
    browsing: Browsing,
) -> None:
    sent: list[str] = []

    def record(request: Request) -> None:
        sent.append(request.resource_type)

    browsing.page.on("request", record)
    await open_graphiql(browsing)
    await browsing.page.locator(".graphiql-execute-button").click()
    await expect(browsing.page.locator(".graphiql-response")).to_contain_text("Headers tab")
    assert "fetch" not in sent and "xhr" not in sent
    await browsing.screenshot("graphiql-no-token")


async def test_graphiql_docs_dialogs_and_completion_run_under_the_policy(
    browsing: Browsing,
) -> None:
    page = browsing.page
    # Radix (inside GraphiQL 4.1.2) logs this for GraphiQL's own dialogs; nothing of ours.
    browsing.watch.allow_console("Missing `Description` or `aria-describedby={undefined}`")
    await open_graphiql(browsing)
    await run(browsing, "admin")
    await page.get_by_role("button", name="Show Documentation Explorer").click()
    await expect(page.locator(".graphiql-doc-explorer")).to_contain_text("KpiDefinition")
    # A dialog adds a <style> element: allowed by the page's nonce, no other inline style is.
    await page.get_by_role("button", name="Open settings dialog").click()
    await expect(page.get_by_role("dialog")).to_contain_text("Settings")
    await page.keyboard.press("Escape")
    await page.locator(".graphiql-query-editor .CodeMirror").click()
    await page.keyboard.press("Control+End")
    await page.keyboard.type("\n{ kp")
    await expect(page.locator(".CodeMirror-hints")).to_contain_text("kpis")
    await browsing.screenshot("graphiql-docs-and-completion")
