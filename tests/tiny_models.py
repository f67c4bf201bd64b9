"""Build tiny, randomly initialised chat models for tests (nothing is downloaded).

`make_tiny_model(path)` writes a complete Hugging Face model folder: a byte-level BPE tokenizer
trained from scratch on a few hundred words of math-flavoured text, wrapped in
`PreTrainedTokenizerFast` with ChatML special tokens and chat template, and a small `LlamaForCausalLM`
saved with `save_pretrained`. The folder loads with `AutoTokenizer` / `AutoModelForCausalLM` like any
Hub checkpoint, so backends, stages and trainers can run on it end to end in a second or two.

The default shape (hidden 64, 4 heads, head_dim 16) suits transformers; vLLM's CPU kernels need
head_dim 64, e.g. ``make_tiny_model(path, hidden_size=128, num_attention_heads=2, num_key_value_heads=1)``.
"""

from __future__ import annotations

import os

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]

_WORDS = (
    "step answer problem solution verify correct incorrect because therefore total each per "
    "add subtract multiply divide sum difference product quotient equals is are the a of to and "
    "in for with on that this we so then first second third next finally result number numbers "
    "how many much dollars eggs apples hours minutes days weeks price cost sells buys makes has "
    "had gives left more less than twice half times percent fraction ratio x y n k value"
).split()


def _training_corpus() -> list[str]:
    """A few hundred lines of math-ish text: words, digits, operators and step markers."""
    lines = []
    for i in range(300):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(8)]
        a, b = i % 17 + 2, i % 11 + 3
        lines.append(
            f"Step {i % 5 + 1}: {' '.join(words)} {a} + {b} = {a + b}, {a} * {b} = {a * b}. "
            f"Answer: {a * b - b} (#{i})"
        )
    return lines


def make_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE `PreTrainedTokenizerFast` with ChatML specials and chat template.

    Any UTF-8 text round-trips (byte-level alphabet); ``<|im_end|>`` is eos, ``<|pad|>`` is pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(
    path: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> str:
    """Write a tiny random Llama chat model (tokenizer + fp32 safetensors) into ``path``.

    Args:
        path: folder to create (parents too); existing files with the same names are overwritten.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size:
            the `LlamaConfig` shape; head_dim is ``hidden_size // num_attention_heads``.
        seed: torch seed for the random weights, so two calls give identical folders.

    Returns:
        ``str(path)``, ready for ``AutoModelForCausalLM.from_pretrained``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = str(path)
    os.makedirs(path, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
