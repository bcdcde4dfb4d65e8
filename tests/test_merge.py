"""Model merging: each method against hand-computed numbers, then whole tiny models merged on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft.utils.merge_utils import ties
from safetensors.torch import load_file

from medtune.merge.merge import MergeError, merge_models, merge_tensor
from medtune.merge.methods import linear, merge_task_vectors, slerp, tensor_seed
from medtune.recipe import MergeConfig, RecipeError, load_merge_recipe

from conftest import qa_rows

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
T = torch.tensor


def close(a: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(a, T(expected, dtype=torch.float32), atol=1e-5)


# --- methods on small tensors ---

def test_linear_is_the_normalized_weighted_average():
    # (1 * [1,2,3,4] + 3 * [3,2,1,0]) / 4
    assert close(linear([T([1.0, 2, 3, 4]), T([3.0, 2, 1, 0])], [1, 3]), [2.5, 2, 1.5, 1])


def test_slerp_endpoints_arc_and_colinear_fallback():
    a, b = T([1.0, 0, 0, 0]), T([0.0, 2, 0, 0])
    assert close(slerp(a, b, 0.0), [1, 0, 0, 0]) and close(slerp(a, b, 1.0), [0, 2, 0, 0])
    # orthogonal: theta = pi/2, both coefficients sin(pi/4) / sin(pi/2)
    s = math.sin(math.pi / 4)
    assert close(slerp(a, b, 0.5), [s, 2 * s, 0, 0])
    # unit vectors 60 degrees apart: the midpoint of the arc is the unit vector at 30 degrees
    c = T([0.5, math.sqrt(3) / 2, 0, 0])
    assert close(slerp(a, c, 0.5), [math.sqrt(3) / 2, 0.5, 0, 0])
    # colinear (b = 2a): plain interpolation, no division by sin(0)
    v = T([1.0, 2, 3, 4])
    assert close(slerp(v, 2 * v, 0.5), [1.5, 3, 4.5, 6])


def test_task_arithmetic_adds_weighted_task_vectors():
    base, m1, m2 = T([1.0, 1, 1, 1]), T([2.0, 1, 0, 1]), T([1.0, 3, 1, 1])
    # tv1 = [1,0,-1,0], tv2 = [0,2,0,0]; base + 1*tv1 + 0.5*tv2
    delta = merge_task_vectors("task_arithmetic", [m1 - base, m2 - base], [1.0, 0.5], [1.0, 1.0])
    assert close(base + delta, [2, 2, 0, 1])


TV1, TV2 = T([4.0, -1, 0.5, 3]), T([-2.0, 2, 0.1, 1])


def test_ties_trims_elects_sign_and_averages_agreeing_entries():
    # density 0.5 keeps 2 of 4: tv1 -> [4,0,0,3] (-1 trimmed), tv2 -> [-2,2,0,0].
    # Elected signs (sum): [+2, +2, 0 -> +, +3]; tv2's -2 disagrees and is dropped.
    # Weighted (1, 0.5), mean over agreeing entries: [4/1, 1/1, 0, 3/1].
    out = merge_task_vectors("ties", [TV1, TV2], [1.0, 0.5], [0.5, 0.5])
    assert close(out, [4, 1, 0, 3])
    assert torch.equal(out, ties([TV1, TV2], T([1.0, 0.5]), density=0.5))  # PEFT's own, for one shared density


def test_ties_takes_a_density_per_model():
    # tv2 untrimmed: signs all +; last element averages tv1's 3 and tv2's 0.5 * 1 over 2 agreeing models.
    assert close(merge_task_vectors("ties", [TV1, TV2], [1.0, 0.5], [0.5, 1.0]), [4, 1, 0.05, 1.75])


def test_dare_rescales_survivors_and_is_seeded():
    tv = T([1.0, 2, 3, 4, 5, 6])
    torch.manual_seed(tensor_seed(7, "w"))
    out = merge_task_vectors("dare_linear", [tv], [1.0], [0.5])
    kept = out != 0
    assert 0 < kept.sum() < 6  # this seed drops some and keeps some
    assert torch.equal(out[kept], tv[kept] / 0.5)  # survivors scaled by 1/density
    cfg = MergeConfig(method="dare_linear", base_model="b", models=[{"model": "m", "density": 0.5}], seed=7)
    base = torch.zeros(6)
    assert torch.equal(merge_tensor(cfg, "w", [tv], base), out)  # same seed and name: same drops
    assert not torch.equal(merge_tensor(cfg, "other", [tv], base), out)
    # density 1 drops nothing: DARE equals its no-drop method
    full = [1.0, 1.0]
    assert torch.equal(merge_task_vectors("dare_linear", [TV1, TV2], [1.0, 0.5], full),
                       merge_task_vectors("task_arithmetic", [TV1, TV2], [1.0, 0.5], full))
    assert torch.equal(merge_task_vectors("dare_ties", [TV1, TV2], [1.0, 0.5], full),
                       merge_task_vectors("ties", [TV1, TV2], [1.0, 0.5], full))


# --- whole models ---

TEXTS = [t for r in qa_rows() for t in (r["question"], r["answer"])] * 5


@pytest.fixture(scope="module")
def llamas(tmp_path_factory, tiny_llama) -> tuple[Path, Path]:
    """The shared tiny Llama and a second one with other random weights but the same tokenizer."""
    from medtune.testing import make_llama

    return tiny_llama, make_llama(tmp_path_factory.mktemp("models") / "tiny-llama-b", TEXTS, vocab_size=300, seed=1)


def _cfg(method: str, models: list, **kw) -> MergeConfig:
    return MergeConfig(method=method, models=[{"model": str(m)} if isinstance(m, Path) else m for m in models], **kw)


def test_ties_merged_tiny_llama_loads_and_generates(llamas, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tuned = llamas
    cfg = _cfg("ties", [{"model": str(tuned), "density": 0.5}], base_model=str(base))
    out = merge_models(cfg, tmp_path / "merged")
    report = json.loads((out / "merge_report.json").read_text())
    a, b, m = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors"), load_file(out / "model.safetensors")
    assert report["method"] == "ties" and report["models"][0]["density"] == 0.5
    assert report["merged_tensors"] == len(a) == len(m) and report["copied_tensors"] == []
    assert report["shards"] == ["model.safetensors"]
    # one model, density 0.5: the base plus the larger half of each tensor's change
    name = "model.layers.0.mlp.up_proj.weight"
    changed = m[name] != a[name]
    assert changed.sum() == a[name].numel() // 2
    assert torch.allclose(m[name][changed], b[name][changed], atol=1e-7)  # base + (tuned - base)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("What causes gout ?", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape == (1, ids.shape[1] + 5)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


def test_streaming_writes_shards_equal_to_an_in_memory_merge(llamas, tmp_path):
    from transformers import AutoModelForCausalLM

    base, tuned = llamas
    cfg = _cfg("dare_ties", [{"model": str(tuned), "density": 0.7}], base_model=str(base), seed=3, shard_size_mb=0.02)
    out = merge_models(cfg, tmp_path / "sharded")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    merged = {k: v for s in shards for k, v in load_file(out / s).items()}
    a, b = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert merged.keys() == a.keys()
    for name in a:  # the whole models in memory, tensor by tensor in another order
        assert torch.equal(merged[name], merge_tensor(cfg, name, [b[name]], a[name])), name
    AutoModelForCausalLM.from_pretrained(out)
    # linear over the same shards: the plain average, in bfloat16 as asked
    lin = merge_models(_cfg("linear", [base, tuned], dtype="bfloat16", shard_size_mb=0.02), tmp_path / "linear")
    avg = {k: v for s in lin.glob("model-*.safetensors") for k, v in load_file(s).items()}
    assert all(avg[k].dtype == torch.bfloat16 and torch.equal(avg[k], ((a[k] + b[k]) / 2).bfloat16()) for k in a)


def test_mismatched_architectures_and_vocabularies_are_refused(llamas, tmp_path):
    from medtune.testing import make_llama

    base, _ = llamas
    wide = make_llama(tmp_path / "wide", TEXTS, vocab_size=300, hidden=48)
    with pytest.raises(MergeError, match=r"tiny-llama and .*wide differ in config.json hidden_size: 32 vs 48"):
        merge_models(_cfg("linear", [base, wide]), tmp_path / "out")
    other_vocab = make_llama(tmp_path / "other-vocab", ["completely different words here"] * 20, vocab_size=300)
    with pytest.raises(MergeError, match=r"tiny-llama and .*other-vocab differ in config.json vocab_size: 444 vs 282"):
        merge_models(_cfg("slerp", [base, other_vocab], t=0.5), tmp_path / "out")
    # same config and weights, another tokenizer: the token ids would mean other words
    retokenized = tmp_path / "retokenized"
    retokenized.mkdir()
    for f in base.iterdir():
        source = other_vocab / f.name if f.name.startswith("tokenizer") else f
        (retokenized / f.name).write_bytes(source.read_bytes())
    with pytest.raises(MergeError, match=r"tiny-llama and .*retokenized differ in tokenizer vocabulary: 444 vs 282 tokens"):
        merge_models(_cfg("linear", [base, retokenized]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bin_only_models_and_existing_outputs_are_refused(llamas, tmp_path):
    base, tuned = llamas
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((base / "config.json").read_text())
    torch.save(load_file(base / "model.safetensors"), bin_only / "pytorch_model.bin")
    with pytest.raises(MergeError, match=r"bin-only: weights are PyTorch .bin files only.*save_pretrained"):
        merge_models(_cfg("linear", [base, bin_only]), tmp_path / "out")
    with pytest.raises(MergeError, match="already exists"):
        merge_models(_cfg("linear", [base, tuned]), tmp_path)


def test_hub_ids_resolve_to_their_cached_snapshot(llamas, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from medtune.merge.merge import open_source
    from medtune.models import ModelNotAvailable
    from medtune.recipe import MergeSource

    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in llamas[0].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = open_source(MergeSource(model="acme/tiny"))
    assert source.dir == snapshot and len(source.weights) == 21
    with pytest.raises(ModelNotAvailable, match="hf download acme/missing"):
        open_source(MergeSource(model="acme/missing"))


def test_mergekit_backend_matches_linear(llamas, tmp_path):
    pytest.importorskip("mergekit")
    base, tuned = llamas
    ours = load_file(merge_models(_cfg("linear", [base, tuned]), tmp_path / "ours") / "model.safetensors")
    theirs_dir = merge_models(_cfg("linear", [base, tuned], backend="mergekit"), tmp_path / "mk")
    theirs = {k: v for s in theirs_dir.glob("*.safetensors") for k, v in load_file(s).items()}
    assert theirs.keys() == ours.keys()
    assert all(torch.allclose(theirs[k], ours[k], atol=1e-6) for k in ours)


# --- recipes ---

def test_shipped_ties_recipe_validates():
    r = load_merge_recipe(RECIPES / "seed001-ties-merge.yaml")
    m = r.merge
    assert (r.name, m.method, m.base_model.model, m.dtype) == ("seed001-ties-merge", "ties", "mistralai/Mistral-7B-Instruct-v0.1", "bfloat16")
    assert [(x.model, x.density, x.weight) for x in m.models] == [("BioMistral/BioMistral-7B", 0.5, 1.0)]


@pytest.mark.parametrize("merge, expected", [
    ({"method": "average", "models": ["a", "b"]}, "merge.method: Input should be 'linear', 'slerp'"),
    ({"method": "slerp", "models": ["a", "b", "c"], "t": 0.5}, "merge.models: Value error, slerp interpolates between exactly two models (got 3)"),
    ({"method": "slerp", "models": ["a", "b"]}, "merge.t: Value error, slerp needs t"),
    ({"method": "ties", "models": [{"model": "a", "density": 0.5}]}, "merge.base_model: Value error, ties merges task vectors (model - base): set base_model"),
    ({"method": "linear", "models": ["a", "b"], "base_model": "c"}, "merge.base_model: Value error, linear combines the models themselves"),
    ({"method": "linear", "models": [{"model": "a", "density": 0.5}, "b"]}, "merge.models: Value error, density applies to ties, dare_ties and dare_linear only"),
    ({"method": "ties", "models": [{"model": "a", "densty": 0.5}], "base_model": "b"}, "merge.models.0.densty: unknown field"),
    ({"method": "ties", "models": ["a"], "base_model": "b", "majority_sign": "frequency", "backend": "mergekit"},
     "merge.backend: Value error, mergekit elects signs by sum only"),
])
def test_recipe_errors_name_the_field(tmp_path, merge, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"name": "m", "merge": merge}))
    with pytest.raises(RecipeError) as exc:
        load_merge_recipe(path)
    assert str(exc.value).startswith(f"{path}: invalid merge recipe")
    assert expected in str(exc.value)
