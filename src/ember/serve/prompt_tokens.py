"""A request's prompts as token ids: the chat template rendered with its tools, or the texts
tokenized. One place, asked by the engine's routes (to run them) and by the job submitter (to
reserve a tenant's tokens for a job before it is queued)."""

from __future__ import annotations

from dataclasses import dataclass

from ember.model.chat_template import ChatTemplate
from ember.model.tokenizer import Tokenizer
from ember.serve.openai_requests import ChatRequest, CompletionRequest, GenerationOptions
from ember.serve.tool_calling import ToolPlan, plan_tools


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    ids: list[int]
    options: GenerationOptions  # the request's, constrained by its tool plan
    plan: ToolPlan | None


def chat_prompt(chat: ChatRequest, template: ChatTemplate, tokenizer: Tokenizer) -> ChatPrompt:
    """Renders and tokenizes; a client's text that the template refuses raises its
    `InvalidRequestError`. Slow for large bodies: callers run it off the loop."""
    plan = plan_tools(chat.tools, template)
    messages, options = chat.messages, chat.options
    if plan is not None:
        messages = plan.messages(messages)
        options = plan.constrain(options)
    tools = None if plan is None else plan.template_tools
    ids = template.encode(messages, tokenizer, add_generation_prompt=True, tools=tools)
    return ChatPrompt(ids, options, plan)


def completion_prompt_ids(completion: CompletionRequest, tokenizer: Tokenizer) -> list[list[int]]:
    texts = [p for p in completion.prompts if isinstance(p, str)]
    if len(texts) == 1:  # the common case: no batch dispatch to the tokenizer's pool
        batch = [tokenizer.encode(texts[0], add_special_tokens=True)]
    else:
        batch = tokenizer.encode_batch(texts, add_special_tokens=True) if texts else []
    encoded = iter(batch)
    return [next(encoded) if isinstance(p, str) else p for p in completion.prompts]
