"""One error type for everything the user can fix: a code, a place and a Spanish message."""
from __future__ import annotations


class AfinarError(Exception):
    """An error caused by the user's input or environment, shown without a traceback.

    `code` is stable (documented in the README) so people can search for it; `where` names
    the file (and line, field) involved. Messages never include dataset text: it may be patient data.
    """

    def __init__(self, code: str, message: str, where: str | None = None, hint: str | None = None):
        self.code = code
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        place = f"{self.where}: " if self.where else ""
        text = f"{place}{self.code}: {self.message}"
        if self.hint:
            text += f"\n  sugerencia: {self.hint}"
        return text


def install_hint(extra: str, note: str = "", make_test: bool = True) -> str:
    """How to add one of afinar's optional extras (`make demo` installs none: the export ones come with `make test`;
    `make_test=False` for an extra it does not install)."""
    also = " (o `make test`, que instala todos los extras)" if make_test else ""
    return f'en la carpeta de afinar: .venv/bin/pip install -e ".[{extra}]"{note}{also}'
