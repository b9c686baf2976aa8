"""Chat templates by name: the turn formats of the common model families, as Jinja templates.

`data.chat_template: chatml` picks one by name; a string with Jinja syntax (`{{` or `{%`) is a
template of its own. Each template is written to its family's published format (the model's
`tokenizer_config.json` on the Hub, or the project's own prompt code) and is prefix-consistent,
so the tokens of each assistant answer can be located and trained on (`data.chat.encode_chat`);
where the published template is not, the departure is named in `FamilyTemplate.source`. Markers
that the family's tokenizer holds as single special tokens are listed in `special_tokens`: a
tokenizer that lacks them gets them added (`data.chat.setup_chat_template`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainformers.errors import ConfigError, did_you_mean

__all__ = [
    "CHAT_TEMPLATES",
    "FamilyTemplate",
    "end_of_turn_tokens",
    "is_jinja",
    "named_template",
    "resolve_chat_template",
]


@dataclass(frozen=True)
class FamilyTemplate:
    """One named chat template.

    Attributes:
        template: The Jinja source (rendered by transformers with trim_blocks and lstrip_blocks).
        special_tokens: Markers that must be single tokens of the tokenizer (added when missing).
        end_of_turn: The token that ends an answer when it is not EOS; generation stops there too.
        source: Where the format comes from, and how this template departs from it, if at all.
    """

    template: str
    special_tokens: tuple[str, ...] = ()
    end_of_turn: str | None = None
    source: str = ""


# Roles other than these raise (transformers turns `raise_exception` into a TemplateError, which
# `render_chat` reports as a DataError naming the conversation's roles).
_ONLY_USER_ASSISTANT = "{%- else %}{{ raise_exception('this chat template has no ' + message['role'] + ' role') }}"
# The first message, when it is a system message, taken out of the loop (templates that put it
# inside the first user turn, or write it without a role marker).
_SYSTEM_FIRST = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] | trim %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system = none %}{%- set loop_messages = messages %}{%- endif %}"
)

CHATML = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA2 = (
    _SYSTEM_FIRST + "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{ bos_token }}{{ '[INST] ' }}"
    "{%- if loop.first and system is not none %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{%- endif %}"
    "{{ message['content'] | trim + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    + _ONLY_USER_ASSISTANT
    + "{%- endif %}{%- endfor %}"
)
MISTRAL = (
    _SYSTEM_FIRST + "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{%- if loop.first and system is not none %}{{ system + '\\n\\n' }}{%- endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    + _ONLY_USER_ASSISTANT
    + "{%- endif %}{%- endfor %}"
)
ZEPHYR = (
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)
GEMMA = (
    _SYSTEM_FIRST + "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{{ '<start_of_turn>user\\n' }}"
    "{%- if loop.first and system is not none %}{{ system + '\\n\\n' }}{%- endif %}"
    "{{ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<start_of_turn>model\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    + _ONLY_USER_ASSISTANT
    + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
)
PHI3 = (
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)
# Stanford Alpaca's prompt (its preamble unless the conversation has a system message), with the
# newline after "### Response:" that litgpt, axolotl and alpaca-lora write; blocks are separated
# by a blank line written *before* each one, so an answer's span is exactly "answer<eos>".
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA = (
    _SYSTEM_FIRST + "{{- bos_token }}{{ system if system is not none else '" + ALPACA_PREAMBLE + "' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '\\n\\n### Response:\\n' + message['content'] + eos_token }}"
    + _ONLY_USER_ASSISTANT
    + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '\\n\\n### Response:\\n' }}{%- endif %}"
)
# FastChat's vicuna_v1.1: system, then "USER: q" and "ASSISTANT: a", separated by " " after the
# system and user turns and by EOS after answers; the generation prompt is "ASSISTANT:".
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA = (
    _SYSTEM_FIRST + '{{- bos_token }}{{ (system if system is not none else "' + VICUNA_SYSTEM + "\") + ' ' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{%- elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
    + _ONLY_USER_ASSISTANT
    + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{%- endif %}"
)

CHAT_TEMPLATES: dict[str, FamilyTemplate] = {
    "alpaca": FamilyTemplate(
        ALPACA, source="Stanford Alpaca's prompt_no_input, with a newline after '### Response:' (litgpt, axolotl)"
    ),
    "chatml": FamilyTemplate(
        CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>", "OpenAI ChatML, as Qwen and many fine-tunes use it"
    ),
    "gemma": FamilyTemplate(
        GEMMA,
        ("<start_of_turn>", "<end_of_turn>"),
        "<end_of_turn>",
        "google/gemma-7b-it without its role-order check; a system message opens the first user turn, as Gemma 3 "
        "writes it",
    ),
    "llama2": FamilyTemplate(
        LLAMA2, source="meta-llama/Llama-2-7b-chat-hf (<<SYS>> inside the first [INST]), without its role check"
    ),
    "llama3": FamilyTemplate(
        LLAMA3,
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|eot_id|>",
        "meta-llama/Meta-Llama-3-8B-Instruct",
    ),
    "mistral": FamilyTemplate(
        MISTRAL,
        source="mistralai/Mistral-7B-Instruct-v0.2 without its role-order check; a system message opens the first "
        "user turn (v0.3 puts it in the last one, which renders past turns differently as a conversation grows)",
    ),
    "phi3": FamilyTemplate(
        PHI3,
        ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        "<|end|>",
        "microsoft/Phi-3-mini-4k-instruct, without the EOS it appends after the last turn (that EOS would "
        "make a conversation's rendering depend on whether more turns follow)",
    ),
    "vicuna": FamilyTemplate(VICUNA, source="FastChat's vicuna_v1.1 conversation template"),
    "zephyr": FamilyTemplate(ZEPHYR, source="HuggingFaceH4/zephyr-7b-beta"),
}


def is_jinja(value: str) -> bool:
    """Whether a `chat_template` value is a Jinja template rather than a name."""
    return "{{" in value or "{%" in value


def named_template(value: str | None, name: str = "data.chat_template") -> FamilyTemplate | None:
    """The template a name picks (case and surrounding spaces ignored); None for None or Jinja.

    Raises:
        ConfigError: `value` is neither a known name nor Jinja; the message lists the names.
    """
    if value is None or is_jinja(value):
        return None
    key = value.strip().lower()
    if key not in CHAT_TEMPLATES:
        raise ConfigError(
            f"{name}={value!r} is not a known chat template{did_you_mean(key, CHAT_TEMPLATES)}; "
            f"use one of {', '.join(CHAT_TEMPLATES)}, a Jinja template, or leave it unset for the tokenizer's own"
        )
    return CHAT_TEMPLATES[key]


def resolve_chat_template(value: str | None, name: str = "data.chat_template") -> str | None:
    """The Jinja source for a template name, a Jinja template as given, None as None.

    Raises:
        ConfigError: as `named_template`.
    """
    family = named_template(value, name)
    return family.template if family is not None else value


def end_of_turn_tokens() -> tuple[str, ...]:
    """The end-of-answer tokens of the named templates (generation stops at those a tokenizer has)."""
    return tuple(dict.fromkeys(t.end_of_turn for t in CHAT_TEMPLATES.values() if t.end_of_turn))
