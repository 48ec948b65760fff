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


def test_page_compares_the_tuned_personality_with_the_base_side_by_side(browser, runs):  # noqa: F811
    engine = TransformersEngine([open_ref(r) for r in runs], with_base=True)
    with Server(create_app(engine, ServeOptions())) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-listo='1']")
        assert page.locator("#personalidad option").all_inner_texts() == [
            "enfermeria", "tutor-algoritmos", "base (modelo base)"]
        box = page.get_by_label("Comparar con el modelo base (lado a lado)")
        assert box.is_visible() and box.is_enabled() and not box.is_checked()
        box.focus()
        page.keyboard.press("Space")  # a native checkbox: the keyboard checks it
        assert box.is_checked()
        assert "modelo base" in page.inner_text("#estado")  # announced (role=status, aria-live)

        page.fill("#entrada", "¿Qué hago con una quemadura?")
        page.focus("#entrada")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "[...document.querySelectorAll('.par .msg.assistant')].filter((m) => m.dataset.fin !== undefined).length == 2",
            timeout=60_000)
        columns = page.locator(".par .columna")
        assert columns.count() == 2
        assert columns.locator("h2").all_inner_texts() == ["Afinado: enfermeria", "Base"]
        answers = page.locator(".par .msg.assistant")
        assert [answers.nth(i).get_attribute("data-modelo") for i in range(2)] == ["enfermeria", "base"]
        for i in range(2):
            text = answers.nth(i).inner_text()
            assert answers.nth(i).get_attribute("data-fin") in ("stop", "length")
            assert "terminó sola" in text or "cortada" in text
        assert "Respuestas listas" in page.inner_text("#estado")

        # the base itself cannot be compared with the base; a plain conversation again
        page.select_option("#personalidad", "base")
        assert box.is_disabled() and not box.is_checked()
        page.fill("#entrada", "¿Qué es una pila?")
        page.click("#enviar")
        page.wait_for_function("document.querySelector('.msg.assistant')?.dataset.fin !== undefined", timeout=60_000)
        assert page.locator(".par").count() == 0
        assert page.locator(".msg.assistant").last.get_attribute("data-modelo") == "base"


def test_no_comparison_box_without_a_base(browser, runs):  # noqa: F811
    engine = TransformersEngine([open_ref(r) for r in runs])
    with Server(create_app(engine, ServeOptions())) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-listo='1']")
        assert page.locator("#caja-comparar").is_hidden()
