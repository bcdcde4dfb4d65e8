from pathlib import Path

import pytest
import yaml

from medtune.recipe import RecipeError, apply_overrides, load_merge_recipe, load_recipe, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    load = load_merge_recipe if "merge" in yaml.safe_load(path.read_text()) else load_recipe
    assert load(path).name == path.stem


def test_seed003_recipe_matches_the_tutorial():
    r = load_recipe(RECIPES / "seed003-flan-t5-medquad.yaml")
    assert r.model.name_or_path == "google/flan-t5-base"
    assert r.prompt.template == "Please answer this question: {question}"
    t = r.train
    assert (t.learning_rate, t.batch_size, t.eval_batch_size, t.weight_decay, t.epochs) == (3e-4, 8, 4, 0.01, 3)
    assert (t.max_source_length, t.max_target_length) == (128, 512)


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text((RECIPES / "seed003-flan-t5-medquad.yaml").read_text())
    r = load_recipe(path, ["train.learning_rate=1e-5", "train.max_steps=7", "model=/some/dir", "eval.metrics=[rouge]"])
    assert r.train.learning_rate == 1e-5 and r.train.max_steps == 7
    assert r.model.name_or_path == "/some/dir" and r.model.kind == "auto"
    assert r.eval.metrics == ["rouge"]


def test_errors_name_the_field_and_allowed_values(recipe_dict):
    recipe_dict["model"] = {"name_or_path": "x", "kind": "bert"}
    recipe_dict["train"]["learning_rate"] = "fast"
    recipe_dict["train"]["lr"] = 1
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(recipe_dict, origin="my.yaml")
    msg = str(exc.value)
    assert msg.startswith("my.yaml: invalid recipe (3 problem(s))")
    assert "model.kind: Input should be 'auto', 'seq2seq' or 'causal'" in msg
    assert "train.learning_rate:" in msg and "'fast'" in msg
    assert "train.lr: unknown field" in msg


def test_missing_and_semantic_errors(recipe_dict):
    del recipe_dict["data"]
    recipe_dict["prompt"]["template"] = "Answer:"
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(recipe_dict)
    assert "data: required field is missing" in str(exc.value)
    assert "prompt.template: Value error, must contain the placeholder {question}" in str(exc.value)


def test_bad_files_and_bad_overrides(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="a recipe file is a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        apply_overrides({}, ["train.learning_rate"])
    with pytest.raises(RecipeError, match="'name' is not a section"):
        apply_overrides({"name": "x"}, ["name.first=1"])
    with pytest.raises(RecipeError, match="'1' is not an index of a list of 1"):
        apply_overrides({"data": {"sources": [{}]}}, ["data.sources.1.path=x"])


def test_overrides_index_lists():
    data = {"data": {"sources": [{"path": "a"}, {"path": "b"}]}}
    apply_overrides(data, ["data.sources.1.path=/x", "data.sources.0=null"])
    assert data["data"]["sources"] == [None, {"path": "/x"}]


def test_recipe_round_trips_through_yaml(recipe_dict):
    from medtune.recipe import dump_recipe

    r = recipe_from_dict(recipe_dict)
    assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r


def _alias_bomb(path: Path, levels: int = 7) -> Path:
    """A "billion laughs" YAML: each key lists nine aliases of the one before, 9**levels values in under 300 bytes."""
    names = "abcdefghi"[:levels]
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    path.write_text("\n".join(lines) + "\n")
    return path


def _loaders():
    from medtune.rag.safety import load_rules
    from medtune.serve.config import load_config

    return [load_recipe, load_merge_recipe, load_config, load_rules]


@pytest.mark.parametrize("load", _loaders(), ids=lambda f: f.__module__.rsplit(".", 1)[-1] + "." + f.__name__)
def test_yaml_alias_bomb_is_refused_in_a_short_message(tmp_path, load):
    import time

    path = _alias_bomb(tmp_path / "bomb.yaml")
    assert path.stat().st_size < 300
    start = time.perf_counter()
    with pytest.raises(ValueError) as exc:
        load(path)
    assert time.perf_counter() - start < 2
    assert str(exc.value).startswith(f"{path}: ") and "alias" in str(exc.value) and len(str(exc.value)) < 500


@pytest.mark.parametrize("text, message", [
    ("a: " + "[" * 1000 + "]" * 1000, "nested too deeply"),
    ("a: " + "9" * 5000, "not valid YAML: Exceeds the limit (4300 digits)"),  # a ValueError from the int constructor
    ("a: 2024-13-45", "not valid YAML: month must be in 1..12"),  # the same from the date constructor
    ("a: &a [x, *a]", "refer to themselves"),  # PyYAML builds a list that holds itself
])
def test_yaml_the_parser_rejects_names_the_file(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as exc:  # read_yaml_mapping's, as for every YAML file medtune reads
        load_recipe(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value)


def test_errors_quote_long_inputs_shortened_and_list_the_first_problems(recipe_dict):
    recipe_dict["notes"] = "x" * 1_000_000
    recipe_dict["extras"] = [["deep"] * 1000] * 90  # 90,000 values: under the alias limit, 800 KB printed whole
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(recipe_dict, origin="my.yaml")
    msg = str(exc.value)
    assert len(msg) < 1000 and "notes: unknown field (check the spelling) (got 'xxx" in msg
    assert "extras: unknown field (check the spelling) (got [['deep', " in msg

    recipe_dict["train"].update({f"typo{i}": i for i in range(100)})
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(recipe_dict, origin="my.yaml")
    msg = str(exc.value)
    assert msg.startswith("my.yaml: invalid recipe (102 problem(s))\n  train.typo0: unknown field")
    assert msg.endswith("train.typo19: unknown field (check the spelling) (got 19)\n  ...and 82 more")


def test_retriever_losses_fit_their_objective(recipe_dict):
    recipe_dict["train"] = {"objective": "embedding", "retriever": {"loss": "bce"}}
    with pytest.raises(RecipeError, match="bce is for train.objective: reranker"):
        recipe_from_dict(recipe_dict)
    recipe_dict["train"]["objective"] = "reranker"
    assert recipe_from_dict(recipe_dict).train.retriever.loss == "bce"
    # sentence-transformers' listwise loss samples its in-batch negatives: none is refused before any work
    recipe_dict["train"]["retriever"] = {"loss": "mnrl", "negatives": 0}
    with pytest.raises(RecipeError, match="train.retriever.negatives: Input should be greater than or equal to 1"):
        recipe_from_dict(recipe_dict)
