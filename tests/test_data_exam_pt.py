"""Portuguese exam CSV (`exam_pt`): the layout of the Teste de Progresso releases exported from
their PDFs (`Número, Texto, Bloco, Resposta Correta, Arquivo Prova`, the options inline in
`Texto`), with the dirt such exports carry, and the line-based layouts."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medtune.data import DataError
from medtune.data.mcq import load_mcq, split_options
from medtune.records import QARecord, from_dataset, to_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "exam_pt"
RELEASE = FIXTURES / "teste_progresso.csv"  # three exams, 34 rows; its dirty rows are listed below
SPREADSHEET = FIXTURES / "prova_planilha.csv"  # the same schema saved by a spreadsheet: BOM, ";", CRLF


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def mcq(question: str, options: tuple[str, ...], answer_index: int, **fields) -> QARecord:
    return QARecord(question, options[answer_index], options=options, answer_index=answer_index, source="exam_pt",
                    language="pt", **fields)


# ---- split_options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "question", "options"),
    [("Qual é a capital?\nA) Lisboa\nB) Porto\nC) Braga", "Qual é a capital?", ("Lisboa", "Porto", "Braga")),
     ("Qual?\n(A) um\n(B) dois\n(C) três\n(D) quatro\n(E) cinco", "Qual?", ("um", "dois", "três", "quatro", "cinco")),
     ("Paciente de 40 anos.\nQual a conduta?\nA. Observar\nB. Operar", "Paciente de 40 anos.\nQual a conduta?",
      ("Observar", "Operar")),
     ("Qual?\r\nA - Sim\r\nB – Não\r\nC - Talvez", "Qual?", ("Sim", "Não", "Talvez")),
     ("Qual?\na) sim,\n   com ressalvas\nb) não", "Qual?", ("sim, com ressalvas", "não")),
     # A lettered list of statements in the question comes before the options.
     ("Considere:\na) a dor\nb) a febre\nEstá correto:\nA) a\nB) b\nC) a e b",
      "Considere:\na) a dor\nb) a febre\nEstá correto:", ("a", "b", "a e b")),
     ("E-mail do paciente?\nA) x\nB) y", "E-mail do paciente?", ("x", "y")),
     # Inline, as the PDF exports write them.
     ("Qual a conduta?  (A) Fazer sinvastatina. (B) Prescrever fibrato. (C) Iniciar ezetimiba. (D) Orientar dieta.",
      "Qual a conduta?", ("Fazer sinvastatina.", "Prescrever fibrato.", "Iniciar ezetimiba.", "Orientar dieta.")),
     ("Qual? ( A ) um ( B ) dois (C) três (D) quatro", "Qual?", ("um", "dois", "três", "quatro")),
     # "vitamina A)" inside the question: "A)" inside a line is used only when "(A)" gives no run.
     ("Falta de vitamina A) ou B) causa? (A) x (B) y (C) z (D) w", "Falta de vitamina A) ou B) causa?",
      ("x", "y", "z", "w")),
     ("Qual? A) um B) dois C) três D) quatro", "Qual?", ("um", "dois", "três", "quatro")),
     # Unbracketed page notes in capitals; words broken at a line's end, but not "pré- e pós-".
     ("Caso clínico CONTINUA NA PRÓXIMA PÁGINA exames pré- e pós-operatórios com beta-\nbloqueador? (A) a (B) b",
      "Caso clínico exames pré- e pós-operatórios com beta-bloqueador?", ("a", "b")),
     # A broken word is joined without its hyphen when it is known whole.
     ("Uso de medica-\nmento e anti- inflamatório? (A) a (B) b", "Uso de medicamento e anti-inflamatório?", ("a", "b")),
     # Options on lines of their own, then the next question's text after a blank line.
     ("Qual?\nA) um\nB) dois\n\nFigura 3 - Radiografia", "Qual?", ("um", "dois"))],
)
def test_split_options(text: str, question: str, options: tuple[str, ...]) -> None:
    assert split_options(text, words={"medicamento", "anti", "inflamatório"}) == (question, options)


def test_split_options_with_the_exams_count() -> None:
    text = "Esquema? (A) RH (B) RHZ (C) H (D) Rifampicina (R), isoniazida (H) e etambutol (E) por 2 meses"
    assert len(split_options(text)[1]) == 5  # alone, "(E)" reads as a fifth option
    assert split_options(text, 4)[1][3] == "Rifampicina (R), isoniazida (H) e etambutol (E) por 2 meses"
    with pytest.raises(ValueError, match=r"only 5 options \(A-E\) found; this exam's questions have 6"):
        split_options(text, 6)


@pytest.mark.parametrize(
    ("text", "message"),
    [("Sem opções.", "no options found"), ("Qual?\nA) x\nC) y", "only option A found, no B after it"),
     ("Qual?\nA) x", "only option A found"), ("Veja (B) e (C).", "no options found")],
)
def test_split_options_fails(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_options(text)


# ---- small files ----------------------------------------------------------------------------


def test_exam_pt_header_names_and_answers(tmp_path: Path) -> None:
    # Header names are matched without case, accents or extra spaces.
    path = write_csv(tmp_path / "prova.csv", [
        ["Numero", "TEXTO", "Resposta  correta"],
        ["1", "Qual é a capital?\nA) Lisboa\nB) Porto\nC) Braga", "(A)"],
        ["2", "Qual?\n(A) um\n(B) dois\n(C) três", " b "],
        ["3", "Qual?\n(A) um\n(B) dois\n(C) três", "Letra C"],
    ])
    records, report = load_mcq("exam_pt", path)
    assert records == [
        mcq("Qual é a capital?", ("Lisboa", "Porto", "Braga"), 0, id="prova:2"),
        mcq("Qual?", ("um", "dois", "três"), 1, id="prova:6"),
        mcq("Qual?", ("um", "dois", "três"), 2, id="prova:10"),
    ]
    assert (report.files_read, report.rows_seen, report.skipped) == (1, 3, [])


def test_exam_pt_bad_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "prova.csv", [
        ["Texto", "Resposta Correta"],
        ["Sem opções\nnenhuma", "A"],
        ["Qual?\nA) x\nB) y", "D"],
        ["Qual?\nA) x\nB) y", "B"],
        ["Qual?\nA) x\nB) y", "AB"],
    ])
    with pytest.raises(DataError) as info:
        load_mcq("exam_pt", path)
    assert str(info.value).startswith(f"{path}, line 2, column 'Texto': no options found")
    records, report = load_mcq("exam_pt", path, on_bad_row="skip")
    assert [r.id for r in records] == ["prova:7"]
    assert [(s["row"], s["reason"]) for s in report.skipped] == [
        (2, "no options found: expected (A), (B), ... in the text, or lines starting with A), A. or A -"),
        (4, "answer 'D' is not one of the options A, B"),
        (10, "answer 'AB' is not a letter"),
    ]


def test_exam_pt_missing_column_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "prova.csv", [["Texto", "Resposta"], ["Qual?\nA) x\nB) y", "A"]])
    with pytest.raises(DataError, match=r"line 1, column 'Resposta Correta': column 'Resposta Correta' not found; "
                                        r"available columns: \['Texto', 'Resposta'\]"):
        load_mcq("exam_pt", path, on_bad_row="skip")


# ---- a release's layout, dirt included ------------------------------------------------------

RELEASE_SKIPS = [  # (line, reason): every row that does not load, and why
    (8, "no options found: expected (A), (B), ... in the text, or lines starting with A), A. or A -"),  # text stops before (A)
    (20, "annulled: Resposta Correta is 'ANULADA'"),
    (21, "annulled: Resposta Correta is '*'"),
    (22, "no Resposta Correta"),
    (23, "more than one right answer: Resposta Correta is 'A/C'"),
    (25, "repeated header row"),  # two exports pasted together
    (28, "answer 'F' is not one of the options A, B, C, D"),
    (29, "row has 6 fields; the header has 5"),  # Texto lost its quotes: its commas split it
    (39, "only 4 options (A-D) found; this exam's questions have 5"),  # cut before (E)
]


def test_release_counts() -> None:
    records, report = load_mcq("exam_pt", RELEASE, on_bad_row="skip")
    assert (report.files_read, report.rows_seen, report.records) == (1, 34, 25)
    assert [(s["row"], s["reason"]) for s in report.skipped] == RELEASE_SKIPS
    assert [len(r.options) for r in records] == [4] * 20 + [5] * 5
    assert len({r.id for r in records}) == 25 and all(r.answer == r.options[r.answer_index] for r in records)
    assert from_dataset(to_dataset(records)) == records


def test_release_bad_rows_are_errors_unless_skipped() -> None:
    with pytest.raises(DataError, match=r"teste_progresso\.csv, line 8, column 'Texto': no options found"):
        load_mcq("exam_pt", RELEASE)


def test_release_dirty_rows() -> None:
    records = {int(r.id.split(":")[1]): r for r in load_mcq("exam_pt", RELEASE, on_bad_row="skip")[0]}
    # The answer in lower case and the last marker "(d)"; "fár- maco" broken at a line's end, whole elsewhere.
    assert records[3] == mcq(
        "Homem, 54 anos, diabético há 12 anos, apresenta creatinina de 1,9 mg/dL e proteinúria de 1,2 g/24h. "
        "Qual classe de fármaco reduz a progressão da nefropatia?",
        ("Betabloqueador", "Diurético tiazídico", "Bloqueador de canal de cálcio",
         "Inibidor da enzima conversora de angiotensina"), 3, id="teste_progresso:3")
    # Markers with no space before them: "é:(A)", "observação.(C)", "Hemostasia(B)".
    assert records[4].options == ("Prescrever corticoide oral por 5 dias.",
                                  "Lavagem nasal com soro fisiológico e observação.", "Iniciar amoxicilina.",
                                  "Salbutamol inalatório de horário.")
    assert records[4].question.endswith("A conduta mais adequada é:") and records[4].answer_index == 1
    assert records[5].options == ("Hemostasia", "Fagocitose", "Transporte de oxigênio", "Coagulação")
    # Figure labels (A) and (B) in the question, before the options.
    assert records[6].question == ("Observe as radiografias de tórax de dois pacientes (figuras A e B): (A) (B) "
                                   "Qual achado é compatível com derrame pleural à direita?")
    assert records[6].options[0] == "Velamento do seio costofrênico direito com curva de Damoiseau na imagem A."
    # The next question's table run on after option D is dropped.
    assert records[7].options == ("12 por 1.000 nascidos vivos", "15 por 1.000 nascidos vivos",
                                  "20 por 1.000 nascidos vivos", "24 por 1.000 habitantes")
    assert records[7].answer_index == 1
    # A page break inside the question.
    assert records[9].question == (
        "Mulher, 62 anos, hipertensa, com dispneia aos pequenos esforços e edema de membros inferiores. "
        "Ecocardiograma: Parâmetro Resultado Referência Fração de ejeção 32% > 55% Diâmetro diastólico do VE 64 mm "
        "< 56 mm Qual fármaco reduz a mortalidade nesta paciente?")
    assert (records[9].options, records[9].answer) == (("Furosemida", "Digoxina", "Carvedilol", "Anlodipino"),
                                                       "Carvedilol")
    # "(E)" inside option B, glued to its word; and inside option D, after a space: this exam has 4 options.
    assert records[10].options[1] == "Tratar com rifampicina(R), isoniazida(H), pirazinamida(Z) e etambutol(E) por 2 meses."
    assert records[11].options == ("Isoniazida e rifampicina por 6 meses.", "Estreptomicina e etionamida por 2 meses.",
                                   "Rifampicina e isoniazida por 2 meses.",
                                   "Rifampicina (R), isoniazida (H), pirazinamida (Z) e etambutol (E) por 2 meses.")
    assert records[11].answer_index == 3
    # A page number ("Página 4 de 18") and a word broken at a line's end ("anti- inflamatório").
    assert records[12].question == ("Paciente de 70 anos, em uso de varfarina, apresenta sangramento gengival discreto "
                                    "e INR de 8,5, sem sangramento maior. Além de suspender a varfarina, a conduta "
                                    "mais adequada é prescrever:")
    assert records[12].options[3] == "anti-inflamatório não esteroide para a dor gengival."
    # Quoted, with its options on lines of their own, one of them over two lines.
    assert records[13] == mcq(
        "Sobre a vacina BCG, assinale a alternativa correta:",
        ("É contraindicada em recém-nascidos com peso inferior a 2.000 g.", "Deve ser repetida aos 10 anos de idade.",
         "Protege contra a tuberculose pulmonar do adulto.", "É aplicada por via subcutânea."), 0,
        id="teste_progresso:13")
    # Roman-numbered statements in the question; an answer padded with spaces.
    assert records[19].options == ("I apenas.", "I e II apenas.", "II e III apenas.", "I, II e III.")
    assert records[24].answer == "PET-CT antes de qualquer biópsia"
    # "A) ... B) ..." inside the line, no brackets.
    assert records[26].options == ("Escherichia coli", "Proteus mirabilis", "Enterococcus faecalis",
                                   "Klebsiella pneumoniae")
    # A soft hyphen and a no-break space.
    assert "hemoglobina de 9,2 g/dL e ferritina de 8 ng/mL." in records[27].question
    # Bloco is the category when the release fills it.
    assert [records[n].category for n in (30, 31, 32, 33, 34)] == [
        "CLÍNICA MÉDICA", "PEDIATRIA", "SAÚDE COLETIVA", "CLÍNICA CIRÚRGICA", "GINECOLOGIA E OBSTETRÍCIA"]
    assert records[31].answer_index == 2 and records[2].category == ""
    # A five-option exam, answer "e".
    assert records[40].options == ("Dieta sem lactose", "Dieta sem glúten", "Corticoide", "Mesalazina", "Metronidazol")
    assert records[40].answer == "Metronidazol"


def test_spreadsheet_export_bom_semicolons_crlf() -> None:
    records, report = load_mcq("exam_pt", SPREADSHEET)  # the annulled question is skipped even with on_bad_row: error
    assert records == [
        mcq("Homem de 58 anos com PA de 150 x 95 mmHg em três consultas; sem lesão de órgão-alvo. A primeira conduta, "
            "além da mudança do estilo de vida, é:",
            ("Iniciar tiazídico em dose baixa; reavaliar em 4 semanas", "Repetir a medida em 1 ano",
             "Solicitar ecocardiograma antes de tratar", "Iniciar betabloqueador"), 0, id="prova_planilha:2",
            category="CLÍNICA MÉDICA"),
        mcq("Qual a vacina indicada aos 2 meses de idade no calendário nacional?",
            ("Tríplice viral", "Pentavalente", "Febre amarela", "Varicela"), 1, id="prova_planilha:7",
            category="PEDIATRIA"),
    ]
    assert report.skipped == [{"file": str(SPREADSHEET), "row": 8, "reason": "annulled: Resposta Correta is 'Anulada'"}]


def test_data_stats_cli_counts_and_reasons() -> None:
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "data", "stats", str(RELEASE), "--loader", "exam_pt"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert (stats["questions"], stats["answered"]) == (25, 25)
    assert [(s["row"], s["reason"]) for s in stats["skipped"]] == RELEASE_SKIPS
