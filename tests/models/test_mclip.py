"""M-CLIP models (models/mclip.py): a transformers text encoder + masked mean + linear head from the M-CLIP repo,
the image tower of a published tag, built offline from a temporary hub cache.

The reference is M-CLIP's own forward (FreddeFrallan/Multilingual-CLIP, ``MultilingualCLIP.forward``) written with
transformers directly: encoder last hidden state, mean over the attention mask, ``LinearTransformation``. A tiny
XLM-R config stands in for xlm-roberta-large and the tiny-vit preset (through a file path) for the image tag.
"""
import json
import math

import pytest
from references import require
import torch

transformers = require("transformers")

from clipforge.models import mclip, registry  # noqa: E402
from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.convert import to_open_clip_state_dict  # noqa: E402
from clipforge.models.factory import (create_model, create_model_and_transforms, describe_model,  # noqa: E402
                                      get_tokenizer)
from clipforge.models.loading import ModelLoadError  # noqa: E402
from clipforge.models.resolve import resolve_weights  # noqa: E402
from model_helpers import HF_STAND_INS, randomize_  # noqa: E402

TOL = 1e-5
REPO = "M-CLIP/XLM-Roberta-Large-Vit-B-32"
BASE = "xlm-roberta-large"
ENCODER = dict(HF_STAND_INS["xlm-roberta"])  # hidden_size 32, vocab 120, pad 1
EMBED = 32  # tiny-vit's embed_dim stands in for ViT-B-32's 512
VOCAB = ["<s>", "<pad>", "</s>", "<unk>", "a", "dog", "un", "chien", "cat", "sleeps"]


def make_hub_cache(cache_dir, repo_id, files, revision="0" * 40):
    """A cache folder laid out as huggingface_hub writes it: models--org--name/{refs,snapshots/<rev>}."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)


class ReferenceMCLIP(torch.nn.Module):
    """M-CLIP's MultilingualCLIP: ``transformer`` (AutoModel, pooler included) and ``LinearTransformation``."""

    def __init__(self):
        super().__init__()
        self.transformer = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**ENCODER))
        self.LinearTransformation = torch.nn.Linear(ENCODER["hidden_size"], EMBED)

    def forward(self, input_ids, attention_mask):
        embs = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        att = attention_mask
        embs = (embs * att.unsqueeze(2)).sum(dim=1) / att.sum(dim=1)[:, None]
        return self.LinearTransformation(embs)


def _json(data) -> bytes:
    return json.dumps(data).encode()


def _bin(state_dict) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def _tokenizer_json() -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok.to_str().encode()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A hub cache with the M-CLIP repo and its encoder's config; the image tag replaced by a tiny-vit file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    reference = randomize_(ReferenceMCLIP()).eval()
    assert "transformer.pooler.dense.weight" in reference.state_dict()  # dropped by name: mean pooling has no use
    image_model = randomize_(CLIP(registry.get_architecture("tiny-vit"))).eval()
    with torch.no_grad():
        image_model.logit_scale.fill_(math.log(50.0))
    image_file = tmp_path / "image.bin"  # open_clip's layout, as the published tags are
    image_file.write_bytes(_bin(to_open_clip_state_dict(image_model.state_dict(), image_model.config)))
    monkeypatch.setitem(mclip.MCLIP_IMAGE_TOWERS, REPO, f"tiny-vit::{image_file}")
    cache = tmp_path / "cache"
    config = {"model_type": "M-CLIP", "modelBase": BASE, "transformerDimensions": ENCODER["hidden_size"],
              "numDims": EMBED, "architectures": ["MultilingualCLIP"], "transformers_version": "4.18.0"}
    make_hub_cache(cache, REPO, {"config.json": _json(config), "pytorch_model.bin": _bin(reference.state_dict()),
                                 "tokenizer.json": _tokenizer_json(),
                                 "tokenizer_config.json": _json({"pad_token": "<pad>"})})
    make_hub_cache(cache, BASE, {"config.json": _json({**ENCODER, "architectures": ["XLMRobertaForMaskedLM"]})})
    return {"cache": cache, "reference": reference, "image": image_model, "config": config}


def _tokens() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, ENCODER["vocab_size"], (3, 16), generator=gen)
    tokens[tokens == 1] = 4
    tokens[0, 10:] = 1  # padded rows, as the tokenizer writes them
    tokens[1, 5:] = 1
    return tokens


@pytest.mark.parametrize("name", [REPO, "hf-hub:" + REPO, "m-clip/xlm-roberta-large-vit-b-32"])
def test_features_match_mclip_and_the_image_tower(hub, no_network, name):
    model = create_model(name, cache_dir=hub["cache"])
    tokens = _tokens()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_text(tokens)
        theirs = hub["reference"](tokens, (tokens != 1).long())
        assert ours.shape == theirs.shape == (3, EMBED)
        assert (ours - theirs).abs().max().item() <= TOL
        assert torch.equal(model.encode_image(images), hub["image"].encode_image(images))
    assert model.logit_scale.item() == pytest.approx(math.log(50.0))  # the image checkpoint's own
    assert model.config.text.hf.pool == "mean" and model.config.text.hf.proj_bias
    assert model.preprocess_config.image_size == 32
    assert model.info.source == f"hf-hub:{REPO} (text) + {mclip.MCLIP_IMAGE_TOWERS[REPO]} (image)"


def test_transforms_and_tokenizer(hub):
    model, _, preprocess = create_model_and_transforms(REPO, cache_dir=hub["cache"], local_files_only=True)
    tokenizer = get_tokenizer(REPO, cache_dir=hub["cache"], local_files_only=True)
    assert tokenizer.context_length == mclip.MCLIP_CONTEXT_LENGTH
    tokens = tokenizer(["a dog", "un chien"])
    assert tokens[0, :4].tolist() == [0, 4, 5, 2] and tokens[0, 4:].eq(1).all()  # <pad> is the encoder's pad
    with torch.no_grad():
        ours = model.encode_text(tokens[:, :16])
        theirs = hub["reference"](tokens[:, :16], (tokens[:, :16] != 1).long())
    assert (ours - theirs).abs().max().item() <= TOL
    assert preprocess is not None


@pytest.mark.parametrize("repo, image, width, base", [
    ("M-CLIP/XLM-Roberta-Large-Vit-B-32", "ViT-B-32", 1024, "xlm-roberta-large"),
    ("M-CLIP/XLM-Roberta-Large-Vit-L-14", "ViT-L-14", 1024, "xlm-roberta-large"),
    ("M-CLIP/XLM-Roberta-Large-Vit-B-16Plus", "ViT-B-16-plus-240", 1024, "xlm-roberta-large"),
    ("M-CLIP/LABSE-Vit-L-14", "ViT-L-14", 768, "sentence-transformers/LaBSE"),
])
def test_listed_repos_describe_their_architecture(tmp_path, no_network, monkeypatch, repo, image, width, base):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch = registry.get_architecture(image)
    family = {"model_type": "bert", "pad_token_id": 0} if "LaBSE" in base else {"model_type": "xlm-roberta",
                                                                                "pad_token_id": 1}
    make_hub_cache(tmp_path, repo, {"config.json": _json({"model_type": "M-CLIP", "modelBase": base,
                                                          "transformerDimensions": width,
                                                          "numDims": arch.embed_dim})})
    make_hub_cache(tmp_path, base, {"config.json": _json({**family, "hidden_size": width})})
    config, local = describe_model("hf-hub:" + repo, cache_dir=tmp_path)
    assert local is None and config.embed_dim == arch.embed_dim and config.tokenizer == repo
    openai = image != "ViT-B-16-plus-240"
    assert config.vision == (registry.get_architecture(image + "-quickgelu").vision if openai else arch.vision)
    assert (config.text.hf.model_name, config.text.hf.model_config["hidden_size"]) == (base, width)
    described = mclip.describe(mclip.parse_name(repo), cache_dir=tmp_path)
    assert described.preprocess.image_size == arch.vision.image_size
    assert described.preprocess.mean[0] == pytest.approx(0.48145466)


def test_names():
    assert mclip.parse_name("hf-hub:M-CLIP/LABSE-Vit-L-14@abc").revision == "abc"
    for other in ("ViT-B-32", "hf-hub:M-CLIP/Other", "M-CLIP/LABSE-Vit-L-14@", "xlm-roberta-large-ViT-H-14", None):
        assert mclip.parse_name(other) is None


def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def test_repo_missing_offline(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as excinfo:
        create_model("M-CLIP/XLM-Roberta-Large-Vit-L-14", cache_dir=tmp_path)
    _one_line(excinfo, "M-CLIP/XLM-Roberta-Large-Vit-L-14", "offline")
    make_hub_cache(tmp_path, REPO, {"config.json": _json({"model_type": "M-CLIP", "modelBase": BASE,
                                                          "transformerDimensions": 32, "numDims": 32})})
    with pytest.raises(FileNotFoundError) as excinfo:
        get_tokenizer(REPO, cache_dir=tmp_path)
    _one_line(excinfo, REPO, BASE, "modelBase")


def _rewrite(hub, state_dict=None, config=None):
    snapshot = next((hub["cache"] / ("models--" + REPO.replace("/", "--")) / "snapshots").iterdir())
    if state_dict is not None:
        (snapshot / "pytorch_model.bin").write_bytes(_bin(state_dict))
    if config is not None:
        (snapshot / "config.json").write_bytes(_json(config))


def test_bad_checkpoints_and_configs(hub, no_network):
    good = hub["reference"].state_dict()
    _rewrite(hub, {k: v for k, v in good.items() if k != "LinearTransformation.bias"})
    with pytest.raises(ModelLoadError) as excinfo:
        create_model(REPO, cache_dir=hub["cache"])
    _one_line(excinfo, "LinearTransformation.bias")
    _rewrite(hub, {**good, "logit_scale": torch.zeros(())})
    with pytest.raises(ModelLoadError) as excinfo:
        create_model(REPO, cache_dir=hub["cache"])
    _one_line(excinfo, "logit_scale", "no place")
    _rewrite(hub, {k: v for k, v in good.items() if "layer.1." not in k})  # an encoder layer short
    with pytest.raises(ModelLoadError) as excinfo:
        create_model(REPO, cache_dir=hub["cache"])
    _one_line(excinfo, "missing (e.g. transformer.encoder.layer.1.", BASE)
    _rewrite(hub, {**good, "transformer.extra.weight": torch.zeros(2)})
    with pytest.raises(ModelLoadError) as excinfo:
        create_model(REPO, cache_dir=hub["cache"])
    _one_line(excinfo, "1 unexpected (e.g. transformer.extra.weight)")
    _rewrite(hub, good, {**hub["config"], "numDims": 512})
    with pytest.raises(ModelLoadError) as excinfo:
        create_model(REPO, cache_dir=hub["cache"])
    _one_line(excinfo, "numDims 512", "32")
    _rewrite(hub, config={**hub["config"], "model_type": "xlm-roberta"})
    with pytest.raises(ModelLoadError) as excinfo:
        create_model(REPO, cache_dir=hub["cache"])
    _one_line(excinfo, "not 'M-CLIP'")


def test_unlisted_mclip_repo_says_so(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hub_cache(tmp_path, "M-CLIP/Other", {"config.json": _json({"model_type": "M-CLIP"}),
                                              "pytorch_model.bin": _bin({})})
    with pytest.raises(ValueError) as excinfo:
        resolve_weights("hf-hub:M-CLIP/Other", cache_dir=tmp_path)
    _one_line(excinfo, "M-CLIP", "MCLIP_IMAGE_TOWERS")
