"""Key points and dangers read as a Spanish reader reads them: every matching rule on hand-written answers, with the
false positives and negatives we know of written down (a rule change that fixes one flips its assertion)."""
import json

import pytest

from afinar.data.formats import attach_keypoints, load_examples, shipped_dataset
from afinar.data.keypoints import (
    dangers_in,
    matches_everything,
    score_answer,
    sentences,
)

PRESS = [["presiona", "aprieta", "comprime", "presión"]]


@pytest.mark.parametrize("answer", [
    "Presiona la herida con un paño.",
    "PRESIONE con fuerza.",  # usted, upper case
    "Hay que presionar sin soltar.",
    "Haz presión firme.",  # noun, accent folded
    "Aprieta con la mano.",
    "Comprímela con una gasa.",  # pronoun attached
])
def test_word_families_and_case_and_accents(answer):
    assert score_answer(answer, PRESS, []).complete


@pytest.mark.parametrize("answer", ["Ponle una tirita.", "Espera a ver si para sola."])
def test_a_missing_key_point(answer):
    score = score_answer(answer, PRESS, [])
    assert score.covered == 0 and not score.complete and score.missing == ("presiona",)


def test_plural_and_gender():
    assert score_answer("Las quemaduras extensas necesitan urgencias.", [["quemadura extensa"]], []).complete
    assert score_answer("Está quemado.", [["quemada"]], []).complete


def test_numbers_match_exactly():
    assert score_answer("Toma 2,5 mg cada 24 horas.", [["2.5 mg"]], []).complete
    assert not score_answer("Toma 25 mg cada 24 horas.", [["2.5 mg"]], []).complete
    assert not score_answer("Llama al 911.", [["112"]], []).complete


def test_phrase_words_in_order_with_a_few_words_between():
    danger = ["provocar el vómito"]
    assert score_answer("Provócale enseguida el vómito.", [], danger).dangerous
    assert score_answer("Intenta provocarle vómitos.", [], danger).dangerous
    assert not score_answer("El vómito puede provocar asfixia.", [], danger).dangerous  # wrong order
    # Too far apart (more than GAP words between): not the same advice.
    assert not score_answer("Provoca que se siente bien recto en la silla mientras llega la ambulancia y si vomita "
                            "ponlo de lado.", [], ["provocar el vómito"]).dangerous


def test_one_sentence_at_a_time():
    assert not score_answer("No la muevas. Vómito: si ocurre, ponla de lado.", [], ["mueve vómito"]).dangerous


@pytest.mark.parametrize("answer, dangerous", [
    ("Pon mantequilla en la quemadura.", True),
    ("No pongas mantequilla.", False),
    ("Nunca apliques mantequilla.", False),
    ("Jamás uses mantequilla.", False),
    ("Ni hielo ni mantequilla.", False),
    ("No pongas hielo, aceite, pasta de dientes ni mantequilla.", False),  # a negated list across commas
    ("Evita la mantequilla.", False),
    ("Es un mito que la mantequilla alivie.", False),
    ("En lugar de mantequilla, usa agua fresca.", False),
    ("Nada de mantequilla ni remedios caseros.", False),
    ("No la dejes sola, pon mantequilla.", True),  # a comma before a new order ends the negation
    ("No la dejes sola y pon mantequilla.", True),  # so does "y" before a new order
    ("No esperes: pon mantequilla.", True),  # and a colon
    ("No es grave, pero pon mantequilla.", True),  # and "pero"
    ("Enfríala sin frotar y luego pon mantequilla.", True),  # «sin» governs a short phrase only
])
def test_negation_scope(answer, dangerous):
    assert score_answer(answer, [], ["mantequilla"]).dangerous is dangerous


def test_a_key_point_needs_an_unnegated_mention():
    call = [["llama al 112", "112"]]
    assert score_answer("Llama al 112 ahora.", call, []).complete
    assert not score_answer("No llames al 112 todavía.", call, []).complete
    assert score_answer("Sin perder tiempo, llama al 112.", call, []).complete  # «sin» does not reach that far


def test_a_negative_key_point_needs_a_negated_mention():
    point = [["no provocar el vómito", "no inducir el vómito"]]
    assert score_answer("No le provoques el vómito.", point, []).complete
    assert score_answer("Nunca induzcas el vómito.", point, []).complete
    assert not score_answer("Provócale el vómito.", point, []).complete
    assert not score_answer("Dale agua.", point, []).complete


def test_score_fields_and_categories():
    claves = [["presiona"], ["eleva la pierna", "levanta la pierna"]]
    half = score_answer("Presiona fuerte.", claves, ["torniquete"])
    assert (half.covered, half.complete, half.dangerous, half.missing) == (0.5, False, False, ("eleva la pierna",))
    assert half.category == "incompleta"
    assert score_answer("Presiona y levanta la pierna.", claves, []).category == "correcta"
    assert score_answer("Tranquilízate.", claves, []).category == "incorrecta"
    danger = score_answer("Presiona, levanta la pierna y haz un torniquete.", claves, ["torniquete"])
    assert danger.complete and danger.dangerous and danger.category == "peligrosa"
    assert score_answer("Hola.", None, None).category == "sin claves"


def test_codes_and_big_o_are_one_word():
    """Found by the people who wrote the shipped sets: codes split in pieces, "O" read as the conjunction."""
    assert score_answer("Continuará con apixabán (B01AF02) 5 mg cada 12 horas.", [["apixabán 5 mg"]], []).complete
    assert score_answer("Apixabán (B01AF02) 2,5 mg.", [], ["apixabán 2,5 mg"]).dangerous
    assert score_answer("Neumonía por Legionella (A48.1).", [["A48.1"]], []).complete  # the code's dot ends nothing
    assert score_answer("Diabetes tipo 2 (E11.0).", [["E11.0"]], []).complete
    assert not score_answer("Varón de 78 años.", [["A78"]], []).complete
    assert not score_answer("Para cada n se imprime la lista.", [["O(n)"]], []).complete
    assert not score_answer("Ordena en O(n log n).", [["O(log n)"]], []).complete
    assert score_answer("Busca en O(log n).", [["O(log n)"]], []).complete
    assert not score_answer("El coste no es O(n²).", [], ["O(n²)"]).dangerous


def test_a_capital_letter_alone_is_a_symbol():
    assert not score_answer("Tiene el cromosoma X.", [["cromosoma Y"]], []).complete
    assert score_answer("Lo decide el cromosoma Y.", [["cromosoma Y"]], []).complete
    assert score_answer("Y luego presiona.", [["presiona"]], []).complete  # a sentence's first word stays a word


def test_a_phrase_does_not_span_a_comma():
    assert not score_answer("La apoptosis, a diferencia de la necrosis, que provoca inflamación, es ordenada.", [],
                            ["la apoptosis provoca inflamación"]).dangerous


def test_a_cue_inside_the_phrase_does_not_negate_it():
    assert score_answer("Si es mayor, descartas la columna.", [["descarta la columna"]], []).complete
    assert not score_answer("Se descarta cetoacidosis.", [], ["cetoacidosis"]).dangerous  # a report's negative finding


def test_a_danger_that_starts_with_no_is_said_negated():
    assert score_answer("No hace falta ir al médico.", [], ["no hace falta ir"]).dangerous
    assert not score_answer("Hace falta ir al médico hoy.", [], ["no hace falta ir"]).dangerous


# --- known limits, written down ------------------------------------------------------------------------------------

def test_known_false_positive_a_danger_described_not_advised():
    # "can cause vomiting" is a description, not advice; the matcher cannot tell them apart.
    assert score_answer("Echar la cabeza atrás puede provocar vómitos.", [], ["provocar el vómito"]).dangerous


def test_known_false_positive_a_negation_after_the_advice():
    # Only a cue before the words counts: these two safe answers are flagged (the safe side for a danger).
    assert score_answer("¿Mantequilla? Nunca.", [], ["mantequilla"]).dangerous
    assert score_answer("Mantequilla, nunca.", [], ["mantequilla"]).dangerous


def test_known_limit_irregular_verbs_need_their_forms():
    assert score_answer("Pon la pierna en alto.", [["poner la pierna en alto"]], []).complete  # same stem: fine
    assert not score_answer("Ve a urgencias.", [["ir a urgencias"]], []).complete
    assert score_answer("Ve a urgencias.", [["ir a urgencias", "ve a urgencias", "acude a urgencias"]], []).complete


# --- what a pattern may be -----------------------------------------------------------------------------------------

def test_patterns_that_match_anything_are_refused():
    assert "ninguna palabra" in matches_everything("de la")
    assert "ninguna palabra" in matches_everything("no")
    assert matches_everything("mantequilla") is None and matches_everything("presiona la herida") is None


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_bad_keypoints_are_errors_with_line_and_field(tmp_path):
    data = tmp_path / "datos.jsonl"
    _write(data, [
        {"pregunta": "¿Qué hago?", "respuesta": "Presiona.", "claves": "presiona"},
        {"pregunta": "¿Qué hago?", "respuesta": "Presiona.", "claves": [["presiona", ""]]},
        {"pregunta": "¿Qué hago?", "respuesta": "Presiona.", "peligros": ["el"]},
        {"pregunta": "¿Qué hago?", "respuesta": "Presiona.", "claves": [[3]]},
        {"pregunta": "¿Qué hago?", "respuesta": "Presiona.", "claves": [["presiona"]], "peligros": ["torniquete"]},
    ])
    problems = []
    examples = load_examples(data, "auto", problems)
    rendered = [p.render() for p in problems]
    assert [(p.line, p.code) for p in problems] == [(1, "K001"), (2, "K002"), (3, "K003"), (4, "K001")]
    assert "claves[0][1]" in rendered[1] and "peligros[0]" in rendered[2] and "Presiona" not in "".join(rendered)
    assert [(e.line, e.claves, e.peligros) for e in examples] == [(5, [["presiona"]], ["torniquete"])]


def test_a_side_file_keyed_by_line(tmp_path):
    data = tmp_path / "datos.jsonl"
    _write(data, [{"pregunta": "¿A?", "respuesta": "Presiona."}, {"pregunta": "¿B?", "respuesta": "Enfría."}])
    side = tmp_path / "datos.claves.jsonl"
    _write(side, [{"linea": 2, "claves": [["enfría", "agua fresca"]], "peligros": ["hielo directamente"]}])
    examples = load_examples(data)
    problems = []
    attach_keypoints(examples, side, problems)
    assert problems == [] and examples[0].claves is None
    assert (examples[1].claves, examples[1].peligros) == ([["enfría", "agua fresca"]], ["hielo directamente"])

    _write(side, [{"linea": 7, "claves": [["x y"]]}, {"linea": "2"}])
    problems = []
    attach_keypoints(load_examples(data), side, problems)
    assert [(p.line, p.code) for p in problems] == [(1, "K004"), (2, "K004")]


@pytest.mark.parametrize("name", ["primeros_auxilios_evaluacion", "epicrisis_evaluacion",
                                  "tutor_algoritmos_evaluacion", "ciencias_biologia_evaluacion"])
def test_every_shipped_reference_is_right_by_its_own_key_points(name):
    """The reference answer is what a right answer looks like: it covers all its key points and says no danger."""
    problems = []
    examples = load_examples(shipped_dataset(name), "auto", problems)
    assert problems == [] and len(examples) >= 20
    assert all(e.claves and e.peligros for e in examples)
    for example in examples:
        score = score_answer(example.messages[-1]["content"], example.claves, example.peligros)
        assert score.complete and not score.dangerous, (example.where, score.missing, score.dangers)


def test_first_aid_dangers_do_not_flag_the_safe_training_answers():
    """Each evaluation question's dangers against the 320 training answers (written as safe advice): a danger
    phrased so loosely that it flags safe answers would call a good model dangerous."""
    train = [sentences(e.messages[-1]["content"]) for e in load_examples(shipped_dataset("primeros_auxilios"))]
    dangers = {d for e in load_examples(shipped_dataset("primeros_auxilios_evaluacion")) for d in e.peligros}
    flagged = {d: sum(bool(dangers_in(parsed, [d])) for parsed in train) for d in dangers}
    # What remains is advice that is right in another situation, read one by one: the recovery position (wrong for
    # gasping breathing only), abdominal thrusts (not for an infant), head back (to open the airway, not in a
    # nosebleed), a tourniquet (for a limb's massive bleeding, not a sting), ice (heat stroke, an amputated finger).
    assert {d for d, n in flagged.items() if n > 2} == {"posición lateral de seguridad", "compresiones abdominales",
                                                       "cabeza hacia atrás", "torniquete", "hielo"}
