"""The chat page in a real headless Chromium (Debian's `chromium` driven by Playwright): send, see it stream, switch."""
import shutil

import pytest

from afinar.inference.engines import TransformersEngine
from afinar.inference.server import ServeOptions, create_app
from afinar.runs import open_ref
from tests.unit.test_serve import Server, runs  # noqa: F401 — the two-personality fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("falta el paquete de Debian 'chromium' (make test lo instala con apt-get si puede)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="falta el paquete de Python 'playwright'")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_page_streams_an_answer_and_switches_personality(browser, runs):  # noqa: F811
    engine = TransformersEngine([open_ref(r) for r in runs])
    with Server(create_app(engine, ServeOptions())) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-listo='1']")
        assert page.inner_text("#sistema") == "Eres un asistente."
        assert page.locator("#personalidad option").all_inner_texts() == ["enfermeria", "tutor-algoritmos"]
        page.fill("#entrada", "¿Qué hago con una quemadura?")
        page.click("#enviar")
        answer = page.locator(".msg.assistant").last
        page.wait_for_function("document.querySelector('.msg.assistant')?.dataset.fin !== undefined", timeout=60_000)
        text = answer.inner_text()
        assert text.strip() and ("terminó sola" in text or "cortada" in text)
        assert answer.get_attribute("data-modelo") == "enfermeria"

        page.select_option("#personalidad", "tutor-algoritmos")
        assert page.inner_text("#sistema") == "Eres un tutor de algoritmos."
        assert page.locator(".msg").count() == 0  # a new conversation for the new personality
        page.fill("#entrada", "¿Qué es una pila?")
        page.focus("#entrada")
        page.keyboard.press("Enter")  # Intro envía
        page.wait_for_function("document.querySelector('.msg.assistant')?.dataset.fin !== undefined", timeout=60_000)
        assert page.locator(".msg.assistant").last.get_attribute("data-modelo") == "tutor-algoritmos"
