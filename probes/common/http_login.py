"""Login forms for the http probe: find the form in a page and build what a browser would submit.

Parsing uses the standard library's html.parser (tolerant of the broken HTML real portals serve). A browser
submits every named, enabled control of the form: hidden fields (CSRF tokens, ASP.NET __VIEWSTATE...), text
inputs with their default values, checked boxes, selected options, and the submit button it clicked; the probe
does the same, then puts the configured credentials over those values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

_SKIPPED_INPUTS = {"file", "reset", "button", "image"}
_BUTTON_INPUTS = {"submit"}


@dataclass(slots=True)
class Form:
    """One <form>: its attributes, the values it would submit, its password fields and first submit button."""

    attrs: dict[str, str]
    values: list[tuple[str, str]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    password_fields: list[str] = field(default_factory=list)
    submit: tuple[str, str] | None = None

    @property
    def action(self) -> str:
        """The action attribute ('' means the page's own URL)."""
        return self.attrs.get("action", "").strip()

    @property
    def method(self) -> str:
        """GET or POST (forms default to GET; login forms are POST in practice)."""
        return "POST" if self.attrs.get("method", "get").strip().lower() == "post" else "GET"

    @property
    def multipart(self) -> bool:
        """Whether the form posts multipart/form-data."""
        return self.attrs.get("enctype", "").strip().lower() == "multipart/form-data"

    def matches(self, selector: str) -> bool:
        """Whether `selector` picks this form: `#id`, `.class`, or a name/id/action substring."""
        if selector.startswith("#"):
            return self.attrs.get("id") == selector[1:]
        if selector.startswith("."):
            return selector[1:] in self.attrs.get("class", "").split()
        return selector in (self.attrs.get("name"), self.attrs.get("id")) or (
            bool(self.action) and selector in self.action
        )

    def payload(self, fields: dict[str, str]) -> list[tuple[str, str]]:
        """Return the submitted pairs: the form's own values, the configured fields replacing same-named ones."""
        out = [(k, v) for k, v in self.values if k not in fields]
        if self.submit is not None and self.submit[0] not in fields:
            out.append(self.submit)
        out.extend(fields.items())
        return out


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: tuple[str, list[tuple[str, bool]]] | None = None  # name, [(value, selected)]
        self._option: dict[str, str] | None = None
        self._textarea: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {k.lower(): (v or "") for k, v in attrs_list}
        if tag == "form":
            self._form = Form(attrs)
            self.forms.append(self._form)
            return
        form = self._form
        if form is None or "disabled" in attrs:
            return
        name = attrs.get("name", "")
        if tag == "input":
            self._input(form, name, attrs)
        elif tag == "button" and name and attrs.get("type", "submit").lower() == "submit" and form.submit is None:
            form.submit = (name, attrs.get("value", ""))
        elif tag == "select" and name:
            self._select = (name, [])
        elif tag == "option" and self._select is not None:
            self._option = attrs
            self._select[1].append((attrs.get("value", ""), "selected" in attrs))
        elif tag == "textarea" and name:
            self._textarea = (name, [])

    def _input(self, form: Form, name: str, attrs: dict[str, str]) -> None:
        kind = attrs.get("type", "text").lower()
        if kind == "password" and name:
            form.password_fields.append(name)
        if not name or kind in _SKIPPED_INPUTS:
            return
        form.names.add(name)
        if kind in _BUTTON_INPUTS:
            if form.submit is None:
                form.submit = (name, attrs.get("value", ""))
            return
        if kind in ("checkbox", "radio") and "checked" not in attrs:
            return
        default = "on" if kind in ("checkbox", "radio") else ""
        form.values.append((name, attrs.get("value", default)))

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select" and self._select is not None and self._form is not None:
            name, options = self._select
            chosen = next((v for v, selected in options if selected), options[0][0] if options else None)
            if chosen is not None:
                self._form.values.append((name, chosen))
                self._form.names.add(name)
            self._select = None
        elif tag == "textarea" and self._textarea is not None and self._form is not None:
            self._form.values.append((self._textarea[0], "".join(self._textarea[1])))
            self._form.names.add(self._textarea[0])
            self._textarea = None


def parse_forms(html: str) -> list[Form]:
    """Return every form of the page, in order."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def find_login_form(html: str, fields: dict[str, str], selector: str | None = None) -> Form | None:
    """Pick the login form: the one `selector` names, else the first with a password field, else one having
    every configured field name."""
    forms = parse_forms(html)
    if selector:
        return next((f for f in forms if f.matches(selector)), None)
    return next((f for f in forms if f.password_fields), None) or next(
        (f for f in forms if set(fields) <= f.names), None
    )


def has_password_form(html: str) -> bool:
    """Whether the page still shows a login form (a password field inside a form)."""
    return any(f.password_fields for f in parse_forms(html))
