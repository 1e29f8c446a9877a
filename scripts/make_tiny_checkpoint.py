"""Builds the bundled checkpoint optimum_onnx23/data/tiny-llama (run once; the result is committed).

A 2-layer Llama (hidden 64, GQA 4/2 heads) with a byte-level BPE tokenizer trained on a few
sentences, then trained for a few hundred steps on them, so that the demo's greedy output is
legible text rather than random tokens. Seeded and deterministic on CPU.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "ONNX is an open format built to represent machine learning models.",
    "ONNX defines a common set of operators and a common file format.",
    "The dynamo exporter traces the model with torch.export and writes standard ONNX operators.",
    "Attention, RMSNormalization and RotaryEmbedding are standard operators since opset 23.",
    "onnxruntime runs the exported model on many execution providers.",
    "The key value cache stays on the device between generation steps.",
    "Optimum extends transformers with tools to export and optimize models.",
    "Hello! I am a tiny language model exported to ONNX.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
OUT = Path(__file__).resolve().parents[1] / "optimum_onnx23" / "data" / "tiny-llama"


def main():
    torch.manual_seed(0)
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=384, special_tokens=special, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers.processors import TemplateProcessing

    bpe.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", padding_side="left", chat_template=CHAT_TEMPLATE,
                                        model_max_length=256)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    batch = tokenizer([s + "</s>" for s in CORPUS], padding=True, return_tensors="pt")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(400):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"final loss {loss.item():.3f}")
    model.eval()
    model.generation_config.max_new_tokens = 24
    model.generation_config.pad_token_id = 3
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    tokenizer.save_pretrained(OUT)


if __name__ == "__main__":
    main()
