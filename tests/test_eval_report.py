import json

from medtune.eval import plot_loss_curve, render_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

LOG_HISTORY = [
    {"loss": 2.5, "learning_rate": 1e-4, "epoch": 0.5, "step": 10},
    {"loss": 2.1, "learning_rate": 8e-5, "epoch": 1.0, "step": 20},
    {"eval_loss": 2.2, "eval_runtime": 1.0, "epoch": 1.0, "step": 20},
    {"loss": 1.8, "learning_rate": 6e-5, "epoch": 1.5, "step": 30},
    {"eval_loss": 1.95, "eval_runtime": 1.0, "epoch": 2.0, "step": 40},
    {"train_runtime": 12.3, "train_loss": 2.13, "epoch": 2.0, "step": 40},
]


def full_report():
    return {
        "name": "tiny-es-run",
        "model": "hf-internal-testing/tiny-random-gpt2",
        "recipe": "recipes/tiny.yaml",
        "data": {"train": 120, "validation": 30, "languages": ["en", "es"]},
        "train": {
            "global_step": 40,
            "train_loss": 2.13,
            "runtime_s": 12.345,
            "train_tokens_per_s": 5321.04,
            "log_history": LOG_HISTORY,
        },
        "eval": {
            "split": "validation",
            "n": 30,
            "metrics": {"rouge1": 41.2345, "rougeL": 38.5, "bleu": 12.0, "chrf": 47.891},
            "samples": [
                {
                    "question": "¿Qué es la hipertensión?",
                    "reference": "Presión arterial alta | crónica.",
                    "prediction": "Es la presión arterial elevada.\nSegunda línea.",
                },
                {"question": "Q2", "reference": "R2", "prediction": "x" * 1000},
                {"question": "Q3", "reference": "R3", "prediction": "P3"},
            ],
        },
        "plots": {"loss_curve": "loss_curve.png"},
    }


def test_write_report_round_trip_and_markdown(tmp_path):
    report = full_report()
    json_path, md_path = write_report(tmp_path / "run", report, max_samples=2)
    assert json_path == tmp_path / "run" / "report.json"
    assert md_path == tmp_path / "run" / "report.md"
    assert json.loads(json_path.read_text(encoding="utf-8")) == report

    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# Run report: tiny-es-run\n")
    assert "hf-internal-testing/tiny-random-gpt2" in md
    assert "- **train:** 120" in md
    # metrics table, values with 2 decimals
    assert "| Metric | Value |" in md
    assert "| rouge1 | 41.23 |" in md
    assert "| rougeL | 38.50 |" in md
    assert "| chrf | 47.89 |" in md
    assert "Evaluated on split `validation`, 30 examples." in md
    # training summary; eval loss is the last logged eval_loss
    assert "- **Steps:** 40" in md
    assert "- **Train loss:** 2.1300" in md
    assert "- **Eval loss:** 1.9500" in md
    assert "- **Runtime:** 12.3 s" in md
    assert "- **Tokens/s:** 5321.0" in md
    # plot as a relative image link
    assert "![loss curve](loss_curve.png)" in md
    # samples: limited to 2, pipes escaped, newlines flattened, long text truncated
    assert "## Sample predictions (2 of 3)" in md
    assert "¿Qué es la hipertensión?" in md
    assert "Presión arterial alta \\| crónica." in md
    assert "Es la presión arterial elevada. Segunda línea." in md
    assert "x" * 1000 not in md and "…" in md
    assert "P3" not in md


def test_eval_loss_from_metrics_wins(tmp_path):
    report = full_report()
    report["eval"]["metrics"]["eval_loss"] = 1.5
    assert "- **Eval loss:** 1.5000" in render_markdown(report)


def test_markdown_copes_with_missing_sections(tmp_path):
    md = render_markdown({})
    assert md.startswith("# Run report: unnamed run")
    for section in ("## Data", "## Metrics", "## Training", "## Sample", "## Loss curve"):
        assert section not in md
    md = render_markdown({"name": "r", "train": {"global_step": 3}, "eval": {"samples": []}})
    assert "- **Steps:** 3" in md
    assert "Train loss" not in md and "## Metrics" not in md


def test_plot_loss_curve_writes_png(tmp_path):
    out = plot_loss_curve(LOG_HISTORY, tmp_path / "plots" / "loss_curve.png")
    assert out == tmp_path / "plots" / "loss_curve.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    # eval-only history still plots
    assert plot_loss_curve([{"eval_loss": 1.0, "step": 5}], tmp_path / "eval.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_loss_curve_none_without_loss(tmp_path):
    path = tmp_path / "loss_curve.png"
    assert plot_loss_curve([], path) is None
    assert plot_loss_curve([{"train_loss": 2.0, "train_runtime": 1.0, "step": 4}], path) is None
    assert not path.exists()


def test_atomic_writes_leave_no_temp_files(tmp_path):
    report = full_report()
    plot_loss_curve(report["train"]["log_history"], tmp_path / "loss_curve.png")
    write_report(tmp_path, report)
    write_report(tmp_path, report)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curve.png", "report.json", "report.md"]
