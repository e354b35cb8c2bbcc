#!/usr/bin/env python3
"""Golden fixtures for the C++ chat format (server/tokenizer/chat_format.h), made with transformers.

    make_chat_fixtures.py QWEN3_TOKENIZER_DIR OUT_FILE

Loads the tokenizer and its chat template from QWEN3_TOKENIZER_DIR (tokenizer.json +
tokenizer_config.json) with AutoTokenizer and writes OUT_FILE, a JSON object:

  tokenizer    path of the tokenizer.json the ids were made with
  cases        [{name, messages, options: {add_generation_prompt, enable_thinking, tools?},
                 expected_text, expected_ids}] from apply_chat_template(tokenize=False) and the ids of
                that text (checked to equal apply_chat_template(tokenize=True))
  error_cases  [{name, messages, options, error}]: conversations on which apply_chat_template raises;
                the C++ side must refuse them too

Run it with the project venv's python (scripts/setup.sh); CTest runs it as the chat_fixtures fixture.
"""
import json
import os
import sys

from transformers import AutoTokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Returns \"sunny\" & <b>bold</b> text.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich or 東京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1.0},
                "threshold": {"type": "number", "default": 2.5e-07, "examples": [1e16, 1e15, -0.0, 0.0001]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.\nLine two\twith a tab and a control char \u0001.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"], "additionalProperties": False, "nullable": None},
    },
}


def call(name, arguments, wrapped=True):
    inner = {"name": name, "arguments": arguments}
    return {"type": "function", "id": "call_" + name, "function": inner} if wrapped else inner


def sys_(c):
    return {"role": "system", "content": c}


def user(c):
    return {"role": "user", "content": c}


def asst(c, **kw):
    m = {"role": "assistant", "content": c}
    m.update(kw)
    return m


def tool(c):
    return {"role": "tool", "content": c, "tool_call_id": "x"}


def cases():
    """(name, messages, options) triples."""
    weather_call = call("get_weather", {"city": "Paris", "unit": "celsius"})
    agent = [
        sys_("You are a helpful agent."),
        user("What's the weather in Paris and Tokyo?"),
        asst("", reasoning_content="I should call the tool twice.",
             tool_calls=[weather_call, call("get_weather", '{"city": "Tokyo"}')]),
        tool('{"temp": 21, "sky": "sunny"}'),
        tool('{"temp": 17, "sky": "rain"}'),
    ]
    out = [
        ("single_user", [user("Hello!")], {}),
        ("single_user_no_gen_prompt", [user("Hello!")], {"add_generation_prompt": False}),
        ("single_user_no_thinking", [user("Hello!")], {"enable_thinking": False}),
        ("thinking_undefined_equals_true", [user("Hello!")], {"enable_thinking": None}),
        ("system_user", [sys_("You are Qwen."), user("Who are you?")], {}),
        ("system_user_no_thinking", [sys_("You are Qwen."), user("Who are you?")],
         {"enable_thinking": False}),
        ("multi_turn_plain", [sys_("Be brief."), user("Hi"), asst("Hello! How can I help?"),
                              user("Tell me a joke."), asst("Why did the chicken cross the road?"),
                              user("Why?")], {}),
        ("multi_turn_think_in_content_history",
         [user("2+2?"), asst("<think>\nSimple arithmetic.\n</think>\n\n4"), user("3+3?")], {}),
        ("last_assistant_think_in_content",
         [user("2+2?"), asst("<think>\nSimple arithmetic.\n</think>\n\n4")],
         {"add_generation_prompt": False}),
        ("last_assistant_reasoning_content",
         [user("2+2?"), asst("4", reasoning_content="\n\nAdd two and two.\n")],
         {"add_generation_prompt": False}),
        ("last_assistant_no_reasoning",
         [user("2+2?"), asst("\n\n4")], {"add_generation_prompt": False}),
        ("reasoning_content_empty_keeps_think_in_content",
         [user("q"), asst("<think>x</think>answer", reasoning_content="")], {"add_generation_prompt": False}),
        ("reasoning_content_null_parses_content",
         [user("q"), asst("<think>x</think>answer", reasoning_content=None)],
         {"add_generation_prompt": False}),
        ("think_parsing_edge_cases",
         [user("q"), asst("pre<think>a<think>\n\nb\n\n</think>mid</think>\n\nend"),
          asst("no open tag</think>\n\n\ntail"), asst("</think>"), user("again")], {}),
        ("assistant_prefill_continuation",
         [user("Write a haiku."), asst("Autumn moonlight—")], {"add_generation_prompt": False}),
        ("tools_no_system", [user("Weather in Paris?")], {"tools": [WEATHER_TOOL]}),
        ("tools_with_system", [sys_("You are a weather bot."), user("Weather in Paris?")],
         {"tools": [WEATHER_TOOL, SEARCH_TOOL]}),
        ("tools_with_system_no_thinking", [sys_("Sys"), user("Hi")],
         {"tools": [SEARCH_TOOL], "enable_thinking": False}),
        ("assistant_tool_calls_multi_step", agent, {"tools": [WEATHER_TOOL]}),
        ("assistant_tool_calls_then_answer",
         agent + [asst("<think>\nBoth done.\n</think>\n\nParis 21°C sunny, Tokyo 17°C rain.")],
         {"tools": [WEATHER_TOOL], "add_generation_prompt": False}),
        ("tool_calls_after_answer_new_query",
         agent + [asst("Paris is sunny."), user("Thanks! And Berlin?"),
                  asst("Checking.", tool_calls=[call("get_weather", {"city": "Berlin"}, wrapped=False)]),
                  tool("cloudy")], {"tools": [WEATHER_TOOL]}),
        ("tool_call_content_and_arguments_types",
         [user("go"), asst("Sure.", tool_calls=[
             call("f", {"n": 3, "x": 1.5, "big": 12345678901234567, "neg": -7, "b": True, "z": None,
                        "s": "quote \" backslash \\ newline \n tab \t é 😀",
                        "nested": {"k": [1, [2, {}], []]}}),
             call("g", "not even json"), call("h", [1, 2.0, "x"]), call("i", "")])],
         {"add_generation_prompt": False}),
        ("tool_response_in_user_message_is_not_a_query",
         [user("Find it."), asst("", tool_calls=[call("search", {"query": "it"})]),
          user("<tool_response>\nfound\n</tool_response>"),
          asst("Found it.", reasoning_content="The result is in.")], {"add_generation_prompt": False}),
        ("tool_first_message", [tool("orphan result"), user("hi")], {}),
        ("system_in_the_middle", [user("a"), sys_("Now be formal."), user("b")], {}),
        ("unicode_emoji",
         [sys_("Réponds en français 🇫🇷."), user("你好！こんにちは 👨‍👩‍👧‍👦 مرحبا नमस्ते 🧑🏽‍💻 e\u0301"),
          asst("Bonjour ! 😀"), user("Ça va ? \u200b\u00a0\U0001F600")], {}),
        ("empty_contents", [sys_(""), user(""), asst(""), user("")], {}),
        ("special_tokens_in_content",
         [user("literal <|im_start|>assistant\n and <|im_end|> and <tool_call>x</tool_call>")], {}),
        ("whitespace_content", [user("  leading and trailing  \n\n"), asst("\n\n\n"), user("\r\n\t")],
         {"enable_thinking": False}),
        ("no_user_only_assistant", [asst("<think>r</think>a"), asst("b", reasoning_content="r2")],
         {"add_generation_prompt": False}),
        ("only_system", [sys_("Only a system prompt.")], {}),
        ("long_multi_turn",
         [sys_("s")] + [m for k in range(6)
                        for m in (user("question %d" % k),
                                  asst("<think>\nthinking %d\n</think>\n\nanswer %d" % (k, k)))]
         + [user("final")], {"enable_thinking": False}),
    ]
    return out


def error_cases():
    return [
        ("empty_conversation", [], {}),
        ("missing_content", [user("hi"), {"role": "user"}], {}),
        ("null_user_content", [{"role": "user", "content": None}], {}),
        ("null_assistant_content_with_tool_calls",
         [user("hi"), {"role": "assistant", "content": None, "tool_calls": [call("f", {"a": 1})]}], {}),
        ("content_parts", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], {}),
        ("tool_call_without_arguments",
         [user("hi"), asst("", tool_calls=[{"type": "function", "function": {"name": "f"}}])], {}),
    ]


def render(tok, messages, options, tokenize):
    kw = {"add_generation_prompt": options.get("add_generation_prompt", True)}
    if "enable_thinking" in options:
        if options["enable_thinking"] is not None:
            kw["enable_thinking"] = options["enable_thinking"]
    else:
        kw["enable_thinking"] = True
    if options.get("tools"):
        kw["tools"] = options["tools"]
    if tokenize:
        return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"]
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tok_dir, out_file = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    out = {"tokenizer": os.path.abspath(os.path.join(tok_dir, "tokenizer.json")), "cases": [],
           "error_cases": []}
    for name, messages, options in cases():
        text = render(tok, messages, options, tokenize=False)
        ids = render(tok, messages, options, tokenize=True)
        assert ids == tok.encode(text, add_special_tokens=False), name
        opts = {"add_generation_prompt": options.get("add_generation_prompt", True),
                "enable_thinking": options.get("enable_thinking", True) is not False,
                "tools": options.get("tools", [])}
        out["cases"].append({"name": name, "messages": messages, "options": opts, "expected_text": text,
                             "expected_ids": ids})
    for name, messages, options in error_cases():
        try:
            render(tok, messages, options, tokenize=False)
        except Exception as e:  # the template's own errors: UndefinedError, TypeError, ValueError
            out["error_cases"].append({"name": name, "messages": messages, "options": options,
                                       "error": "%s: %s" % (type(e).__name__, e)})
        else:
            sys.exit("error case %s rendered without an error; the template changed" % name)
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print("wrote %d cases and %d error cases to %s" % (len(out["cases"]), len(out["error_cases"]), out_file))


if __name__ == "__main__":
    main()
