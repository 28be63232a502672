"""Shared helpers for model tests: random weights that exercise every parameter and buffer."""
import torch


def randomize_(module: torch.nn.Module, seed: int = 0, vectors_only: bool = False) -> torch.nn.Module:
    """Fill every floating parameter and BatchNorm statistic with random values.

    Default inits leave parts of a model inert (zeroed residual BatchNorms, zero biases, unit running
    variances), which would let a wrong mapping of those tensors go unnoticed. ``vectors_only`` touches
    only 1-D tensors (where the inert inits live), which is much cheaper for full-size models.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        stats = [(n, b) for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))]
        for name, tensor in list(module.named_parameters()) + stats:
            if not tensor.is_floating_point() or tensor.device.type == "meta" or (vectors_only and tensor.ndim > 1):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("logit_scale", "logit_bias")):
                continue
            else:
                std = 0.02 if tensor.ndim > 1 else 0.1
                tensor.add_(torch.randn(tensor.shape, generator=gen) * std)
    return module


# Small transformers configs (as config.json dicts) standing in for the hub config of each family of Hugging Face
# text tower open_clip publishes: same model_type, tiny sizes. Presets name only the hub model; tests that build
# them offline swap one of these in (``hf_stand_in``).
_SMALL_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
               "max_position_embeddings": 40, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1}
HF_STAND_INS = {
    "roberta": {"model_type": "roberta", "vocab_size": 99, **_SMALL_BERT},
    "xlm-roberta": {"model_type": "xlm-roberta", "vocab_size": 120, **_SMALL_BERT},
    "m2m_100": {"model_type": "m2m_100", "vocab_size": 90, "d_model": 32, "encoder_layers": 2, "decoder_layers": 1,
                "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64, "max_position_embeddings": 40, "scale_embedding": True, "pad_token_id": 1},
    "mt5": {"model_type": "mt5", "vocab_size": 90, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
            "num_decoder_layers": 1, "num_heads": 4, "pad_token_id": 0},
}


def hf_family(model_name: str) -> str:
    """The HF_STAND_INS family of an open_clip hub text model name."""
    name = model_name.lower()
    return ("m2m_100" if "nllb" in name else "mt5" if "mt5" in name else "xlm-roberta" if "xlm-roberta" in name
            else "roberta")


def hf_stand_in(config):
    """``config`` with its Hugging Face text tower built from a small local config (other configs unchanged)."""
    import dataclasses

    if config.text.kind != "hf":
        return config
    stand_in = dict(HF_STAND_INS[hf_family(config.text.hf.model_name)])
    if config.decoder is not None:  # CoCa: the decoder reads the encoder's states, so the widths must agree
        stand_in["hidden_size"] = config.decoder.width
    hf = dataclasses.replace(config.text.hf, model_config=stand_in)
    return dataclasses.replace(config, text=dataclasses.replace(config.text, hf=hf))
