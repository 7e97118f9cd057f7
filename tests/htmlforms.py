"""Read forms, links and frames out of HTML the way a browser would (for test-client flows)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[dict[str, str]] = []
        self.iframes: list[str] = []
        self._form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "fields": {},
                          "id": a.get("id", "")}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            if a.get("type") in ("checkbox", "radio"):
                self._form.setdefault("choices", {}).setdefault(a["name"], []).append(a.get("value", ""))
            else:
                self._form["fields"][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a)
        elif tag == "iframe" and a.get("src"):
            self.iframes.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def parse(html: str) -> _Parser:
    p = _Parser()
    p.feed(html)
    return p


def follow_sandbox_launch(client: Any, user_key: str, hint: str | None = None) -> Any:
    """Click "Launch as …" in the sandbox and follow login → auth → form post → launch, like a browser."""
    page = client.get(f"/sandbox/course/{user_key}" + (f"?hint={hint}" if hint else ""))
    assert page.status_code == 200
    login_url = parse(page.get_data(as_text=True)).iframes[0]
    resp = client.get(login_url.replace("http://localhost", ""))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:400]
    auth = client.get(resp.headers["Location"].replace("http://localhost", ""))
    assert auth.status_code == 200, auth.get_data(as_text=True)[:400]
    form = parse(auth.get_data(as_text=True)).forms[0]
    return client.post(form["action"].replace("http://localhost", ""), data=form["fields"])
