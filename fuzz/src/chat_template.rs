//! `chat_template`: a chat template as a model directory ships it in
//! `tokenizer_config.json`, rendered over messages as a chat request's are. Input: the
//! template, then NUL-separated role/content pairs.

use airlock_engine::ChatMessage;

use crate::split;

/// A small word-level tokenizer: the template, not the vocabulary, is under test.
const TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "<unk>": 2, "user": 3, "assistant": 4, "system": 5, "hello": 6}, "unk_token": "<unk>"}
}"#;

/// At most this many messages (a request's are bounded by the body size limit anyway).
const MAX_MESSAGES: usize = 64;

pub fn run(data: &[u8]) {
    let parts = split::nul_parts(data, 1 + 2 * MAX_MESSAGES);
    let (template, rest) = parts
        .split_first()
        .map_or((&[][..], &[][..]), |(t, r)| (*t, r));
    let messages: Vec<ChatMessage> = rest
        .chunks(2)
        .map(|pair| ChatMessage {
            role: split::text(pair[0]),
            content: pair.get(1).map(|c| split::text(c)).unwrap_or_default(),
            ..ChatMessage::default()
        })
        .collect();
    let dir = crate::scratch("chat_template");
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.exists() {
        crate::write(&tokenizer, TOKENIZER_JSON.as_bytes());
    }
    let config = serde_json::json!({
        "chat_template": split::text(template),
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
        "add_bos_token": false,
    });
    crate::write(
        &dir.join("tokenizer_config.json"),
        config.to_string().as_bytes(),
    );
    let _ = airlock_engine::fuzzing::chat_template(&dir, &messages);
}

/// Seeds: real templates' shapes and the classic hostile ones.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let chat = |template: &str, pairs: &[(&str, &str)]| {
        let mut out = template.as_bytes().to_vec();
        for (role, content) in pairs {
            out.push(0);
            out.extend_from_slice(role.as_bytes());
            out.push(0);
            out.extend_from_slice(content.as_bytes());
        }
        out
    };
    let convo = [
        ("system", "Be brief."),
        ("user", "hello"),
        ("assistant", "hi"),
        ("user", "more"),
    ];
    vec![
        (
            "llama3",
            chat(
                "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
                &convo,
            ),
        ),
        (
            "chatml",
            chat(
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
                &convo,
            ),
        ),
        (
            "mistral_raise",
            chat(
                "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}",
                &[("user", "a"), ("user", "b")],
            ),
        ),
        (
            "pycompat",
            chat(
                "{% set sys = messages[0]['content'].strip().split('\n') %}{% for m in messages %}{{ m.role.upper() }}: {{ m.content.startswith('h') }} {{ m.content.replace('l', 'L') }} {{ '%s' % m.content }}{% endfor %}{{ messages | tojson }}{{ namespace(a=1).a }}",
                &convo,
            ),
        ),
        (
            "macro_recursion",
            chat(
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                &[("user", "x")],
            ),
        ),
        (
            "nested_loops",
            chat(
                "{% for i in range(300) %}{% for j in range(300) %}{% if loop.last %}{{ i }}{% endif %}{% endfor %}{% endfor %}",
                &[("user", "x")],
            ),
        ),
        (
            "string_repeat",
            chat("{{ 'ab' * 1000000000 }}", &[("user", "x")]),
        ),
        (
            "unclosed",
            chat("{% for m in messages %}{{ m.content ", &[("user", "x")]),
        ),
        (
            "filters",
            chat(
                "{{ messages | map(attribute='content') | join(', ') | upper | replace('A', 'b') | list | reverse | first }}{{ messages | selectattr('role', 'equalto', 'user') | list | length }}{{ (messages[-1].content ~ 'x') | truncate(3) }}{{ 7 // 0 }}",
                &convo,
            ),
        ),
    ]
}
