"""Near-duplicates, language share, personal-data detection and the epicrisis checker."""
import random

import pytest

from afinar.data.duplicates import (
    exact_duplicates,
    jaccard,
    near_duplicates,
    normalise,
    shingles,
)
from afinar.data.language import language_share
from afinar.data.pii import find_pii
from afinar.evaluate.checks import check_epicrisis


def test_normalise_and_exact_duplicates():
    assert normalise("¿Qué  HAGO, si...?") == normalise("que hago si")
    assert exact_duplicates(["Hola, mundo.", "otra cosa", "hola mundo"]) == [(0, 2)]


def _sentences(n, seed=0):
    rng = random.Random(seed)
    vocab = [f"palabra{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(n)]


def _edit(text, k, seed=1):
    words = text.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), k):
        words[i] = "cambiada"
    return " ".join(words)


def test_near_duplicates_exhaustive_small():
    texts = _sentences(20)
    texts.append(_edit(texts[3], 1))  # one word changed: Jaccard of 3-grams ~0.8
    pairs = near_duplicates(texts, threshold=0.5)
    assert [(i, j) for i, j, _ in pairs] == [(3, 20)]
    assert pairs[0][2] == pytest.approx(jaccard(shingles(texts[3]), shingles(texts[20])), abs=1e-3)


def test_near_duplicates_lsh_matches_exhaustive_on_planted_pairs():
    texts = _sentences(1500)
    planted = {}
    for k, source in enumerate(range(0, 300, 15)):
        texts.append(_edit(texts[source], 1, seed=k))
        planted[(source, len(texts) - 1)] = True
    pairs = {(i, j) for i, j, s in near_duplicates(texts, threshold=0.7)}
    assert pairs == set(planted)  # all found (Jaccard ~0.8 → LSH recall ≈ 1), no false positives


def test_language_share():
    assert language_share("Llama al 112 y espera a que llegue la ambulancia con la persona.").non_spanish_share == 0
    english = language_share("You should call the emergency number and wait for the ambulance with the person.")
    assert english.non_spanish_share == 1 and english.by_language == {"en": english.words}
    mixed = language_share(
        "Enfría la quemadura con agua durante veinte minutos y no pongas hielo. "
        "Then cover the burn with a clean dressing and do not pop the blisters."
    )
    assert 0.3 < mixed.non_spanish_share < 0.7
    code = language_share("La búsqueda binaria divide el rango en dos. ```python\nfor item in the_list: print(item) if it is not None\n```")
    assert code.non_spanish_share == 0  # code is not English prose


@pytest.mark.parametrize(
    "text, kinds",
    [
        ("DNI 12345678Z", ["dni"]),
        ("DNI 12345678A", []),  # wrong check letter: a number, not a DNI
        ("NIE X1234567L", ["nie"]),
        ("RUT 12.345.678-5", ["rut"]),
        ("RUT 12.345.678-4", []),
        ("llamar al 612 345 678 o al +34 912345678", ["telefono", "telefono"]),
        ("escribe a nombre.apellido@hospital.es", ["email"]),
        ("La paciente María López refiere dolor", ["nombre"]),
        ("Paciente masculino de 72 años. Paciente Diabético.", []),
        ("Don Quijote sale de La Mancha con Sancho.", []),  # fiction, not a patient
        ("Amoxicilina (J01CR02) 875/125 mg cada 8 horas, J18.9, 112, 2024", []),
    ],
)
def test_personal_data_kinds(text, kinds):
    assert sorted(find_pii(text)) == sorted(kinds)


CASE = {
    "sexo": "M",
    "edad": 72,
    "motivo_ingreso": "fiebre y tos productiva de 3 días",
    "diagnosticos": [{"descripcion": "Neumonía adquirida en la comunidad", "cie10": "J18.9"}],
    "procedimientos": ["Radiografía de tórax"],
    "medicamentos": [{"nombre": "amoxicilina/ácido clavulánico", "atc": "J01CR02", "dosis": "875/125 mg cada 8 horas"}],
    "evolucion": "Afebril desde el día 2.",
    "indicaciones_alta": ["Completar 7 días de antibiótico"],
}
GOOD = (
    "Ingresa por fiebre y tos productiva de 3 días de evolución. Paciente masculino de 72 años en quien la radiografía "
    "de tórax confirma una neumonía adquirida en la comunidad (J18.9). Recibe tratamiento con amoxicilina/ácido "
    "clavulánico (J01CR02) 875/125 mg cada 8 horas, con buena respuesta clínica y afebril desde el día 2. Tolera la vía "
    "oral, mantiene buena saturación respirando aire ambiente y no presenta complicaciones durante la estancia. Se "
    "decide el alta a domicilio con indicación de completar 7 días de antibiótico, control por su médico de atención "
    "primaria y consulta en urgencias si reaparece la fiebre o aumenta la dificultad respiratoria."
)


def test_good_epicrisis_passes():
    assert check_epicrisis(CASE, GOOD) == []


@pytest.mark.parametrize(
    "edit, code",
    [
        (lambda t: t.replace("Ingresa por", "El paciente ingresa por"), "E001"),
        (lambda t: " ".join(t.split()[:60]), "E002"),
        (lambda t: t.replace("neumonía adquirida", "**neumonía** adquirida"), "E003"),
        (lambda t: t.replace(" (J18.9)", ""), "E004"),
        (lambda t: t + " Antecedente de hipertensión (I10).", "E005"),
        (lambda t: t.replace(" (J01CR02)", ""), "E006"),
        (lambda t: t + " Se añade omeprazol (A02BC01).", "E007"),
        (lambda t: t.replace("72 años", "74 años"), "E008"),
        (lambda t: t + " Se pauta paracetamol si dolor.", "E009"),
        (lambda t: t + " Revisión el 15/03/2025.", "E008"),  # a date that is not in the input
    ],
)
def test_each_epicrisis_rule(edit, code):
    codes = [f.code for f in check_epicrisis(CASE, edit(GOOD))]
    assert code in codes, codes
