//! Constrained decoding: structured outputs (`response_format`, `text.format`) and forced
//! tool calls (`tool_choice: required` or a named function). At every step the grammar's
//! matcher ([llguidance], the library llama.cpp and mistral.rs use) computes which tokens can
//! continue a valid output; the others get a logit of −∞ before sampling, and the sampled
//! token advances the matcher. The log-probabilities a request asks for stay those of the
//! raw logits (`crate::sampling`), as for unconstrained requests.
//!
//! Per model, the token trie (every token's bytes) and llguidance's parser factory are built
//! once, on the first constrained request, and shared; per request, the grammar is compiled
//! at submission, where a schema the compiler cannot honour is refused naming its keyword.
//!
//! [llguidance]: https://github.com/guidance-ai/llguidance

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::tokenizer::TextTokenizer;
use crate::{EngineError, Grammar, GrammarSpec, ToolFormat};

/// How JSON is laid out under a grammar: OpenAI-style one-line JSON with a space after `,`
/// and `:`, as models write it (`json.dumps`) and every tool-call format shows it. A fixed
/// layout also bounds the output: flexible whitespace would let a weak model emit spaces
/// until `max_tokens`.
fn json_options() -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// A model's grammar support: its end-of-sequence ids and, once built, the parser factory.
pub struct Grammars {
    vocab_size: usize,
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl Grammars {
    /// For a model whose logits have `vocab_size` entries.
    pub fn new(vocab_size: usize) -> Self {
        Grammars {
            vocab_size,
            factory: OnceLock::new(),
        }
    }

    /// The parser factory, built on first use: the trie over every token's bytes (tens of
    /// milliseconds for a 150k vocabulary). A tokenizer that cannot be mapped to bytes
    /// gives an error here, every time, naming why.
    fn factory(&self, tokenizer: &TextTokenizer) -> Result<&Arc<ParserFactory>, String> {
        self.factory
            .get_or_init(|| {
                // The library's own tokenizer.json reader asserts on vocabularies it does not
                // expect; a model file must never take the engine down.
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    build_factory(tokenizer, self.vocab_size)
                }))
                .unwrap_or_else(|_| Err("its vocabulary cannot be mapped to bytes".into()))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Compiles a request's grammar into a fresh matcher for its sequence.
    pub fn compile(
        &self,
        tokenizer: &TextTokenizer,
        grammar: &Grammar,
    ) -> Result<Constraint, EngineError> {
        let refuse = |reason: String| EngineError::InvalidRequest {
            param: grammar.param,
            reason,
        };
        let factory = self
            .factory(tokenizer)
            .map_err(|e| refuse(format!("this model cannot decode under a grammar: {e}")))?;
        let top = match &grammar.spec {
            GrammarSpec::JsonObject => json_grammar(json!({"type": "object"})),
            GrammarSpec::JsonSchema(schema) => json_grammar(schema.clone()),
            GrammarSpec::ToolCalls {
                functions,
                parallel,
                or_schema,
            } => {
                let format = tokenizer.tool_format().ok_or_else(|| {
                    refuse("this model's chat template teaches no tool-call format".into())
                })?;
                let trie = factory.tok_env().tok_trie();
                let calls = tool_call_lark(trie, format, functions, *parallel);
                TopLevelGrammar::from_lark(match or_schema {
                    // `calls` starts with its own `start:` rule: renamed, then offered
                    // beside the answer.
                    Some(schema) => format!(
                        "start: calls | answer\nanswer: %json {}\n{}",
                        with_json_options(schema.clone()),
                        calls.replacen("start:", "calls:", 1)
                    ),
                    None => calls,
                })
            }
        };
        let eos = tokenizer.eos_ids().to_vec();
        let parser = std::panic::catch_unwind(AssertUnwindSafe(|| factory.create_parser(top)))
            .map_err(|_| refuse("the grammar compiler failed on this schema".into()))?
            .map_err(|e| refuse(compile_error(&e.to_string())))?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
            param: grammar.param,
            tok_eos: factory.tok_env().tok_trie().eos_token(),
            eos,
        })
    }
}

fn build_factory(
    tokenizer: &TextTokenizer,
    vocab_size: usize,
) -> Result<Arc<ParserFactory>, String> {
    let mut words = tokenizer.trie_bytes()?;
    let eos = *tokenizer
        .eos_ids()
        .first()
        .ok_or("it has no end-of-sequence token")?;
    // The model's logits may have rows past the tokenizer's vocabulary (padding): those
    // tokens have no bytes and are never allowed.
    words.resize(words.len().max(vocab_size), Vec::new());
    let info = TokRxInfo::new(words.len() as u32, eos);
    let trie = TokTrie::from(&info, &words);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new(
        &env,
        InferenceCapabilities::default(),
        &llguidance::earley::SlicedBiasComputer::general_slices(),
    )
    .map_err(|e| e.to_string())?;
    factory.quiet();
    Ok(Arc::new(factory))
}

/// A JSON Schema as a grammar, with the layout of [`json_options`] unless the schema sets
/// its own (`x-guidance`).
fn json_grammar(schema: Value) -> TopLevelGrammar {
    TopLevelGrammar::from_json_schema(with_json_options(schema))
}

fn with_json_options(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema
        && !map.contains_key("x-guidance")
    {
        map.insert("x-guidance".into(), json_options());
    }
    schema
}

/// The compiler's error, shortened to its first line (the rest is the grammar it was
/// compiling, which the client sent).
fn compile_error(e: &str) -> String {
    let first = e.lines().next().unwrap_or(e);
    let mut out: String = first.chars().take(300).collect();
    if out.len() < first.len() {
        out.push('…');
    }
    format!("unsupported or invalid schema: {out}")
}

/// One call's JSON: `{"name": <one of the functions>, "<arguments key>": <its parameters>}`,
/// the name first as every format writes it.
fn call_schema(functions: &[crate::ToolFunction], arguments_key: &str) -> Value {
    let one = |f: &crate::ToolFunction| {
        let mut properties = serde_json::Map::new();
        properties.insert("name".into(), json!({"const": f.name}));
        properties.insert(arguments_key.into(), f.parameters.clone());
        json!({
            "type": "object",
            "properties": properties,
            "required": ["name", arguments_key],
            "additionalProperties": false,
        })
    };
    let schema = match functions {
        [f] => one(f),
        fs => json!({"anyOf": fs.iter().map(one).collect::<Vec<_>>()}),
    };
    with_json_options(schema)
}

/// A Lark string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The grammar of one or more tool calls (`parallel`) in the model's own format, as its
/// chat template teaches it and `docs/api.md` ("Tool calling") parses it back.
fn tool_call_lark(
    trie: &TokTrie,
    format: ToolFormat,
    functions: &[crate::ToolFunction],
    parallel: bool,
) -> String {
    let repeat = |sep: &str| {
        if parallel {
            format!("start: call ({} call)*\n", lit(sep))
        } else {
            "start: call\n".to_owned()
        }
    };
    match format {
        ToolFormat::Hermes => format!(
            "{}call: {} %json {} {}\n",
            repeat("\n"),
            lit("<tool_call>\n"),
            call_schema(functions, "arguments"),
            lit("\n</tool_call>"),
        ),
        ToolFormat::Llama3Json => format!(
            "{}call: %json {}\n",
            repeat("; "),
            call_schema(functions, "parameters"),
        ),
        ToolFormat::Mistral => {
            let mut array = json!({
                "type": "array",
                "items": call_schema(functions, "arguments"),
                "minItems": 1,
            });
            if !parallel {
                array["maxItems"] = json!(1);
            }
            array["x-guidance"] = json_options();
            // `[TOOL_CALLS]` is a control token in Mistral's vocabularies: allowed by id,
            // as the model writes it; spelled out where it is plain text.
            format!("start: {} %json {array}\n", marker(trie, "[TOOL_CALLS]"))
        }
        ToolFormat::MistralArgs => {
            // Per call `[TOOL_CALLS]name[ARGS]{arguments}`; each call opens with the marker.
            let calls: Vec<String> = functions
                .iter()
                .map(|f| {
                    format!(
                        "{} {} {} %json {}",
                        marker(trie, "[TOOL_CALLS]"),
                        lit(&f.name),
                        marker(trie, "[ARGS]"),
                        with_json_options(f.parameters.clone()),
                    )
                })
                .collect();
            let start = if parallel {
                "start: call+\n"
            } else {
                "start: call\n"
            };
            format!("{start}call: {}\n", calls.join(" | "))
        }
    }
}

/// A Mistral control token: by id where the vocabulary has it (as the model writes it),
/// spelled out where it is plain text.
fn marker(trie: &TokTrie, text: &str) -> String {
    match trie.get_special_token(text) {
        Some(id) => format!("<[{id}]>"),
        None => lit(text),
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    param: &'static str,
    /// The trie's end-of-sequence token: the grammar allows it where the output may end.
    tok_eos: u32,
    /// Every end-of-sequence id of the model: allowed exactly when `tok_eos` is.
    eos: Vec<u32>,
}

impl Constraint {
    fn failed(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::InvalidRequest {
            param: self.param,
            reason: format!("the grammar could not {what}: {e}"),
        }
    }

    /// Sets the logit of every token that cannot continue a valid output to −∞. The
    /// grammar is the client's: a panic in the library while following it fails this
    /// sequence, never the engine thread that serves everyone.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        let matcher = &mut self.matcher;
        let allowed = std::panic::catch_unwind(AssertUnwindSafe(|| matcher.compute_mask_or_eos()))
            .map_err(|_| self.failed("compute the next allowed tokens", "it panicked"))?
            .map_err(|e| self.failed("compute the next allowed tokens", e))?;
        let eos_ok = allowed.is_allowed(self.tok_eos);
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            if allowed.is_allowed(id) || (eos_ok && self.eos.contains(&id)) {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return Err(self.failed("continue", "no token is allowed"));
        }
        Ok(())
    }

    /// Advances the grammar over the sampled token (not called for end-of-sequence).
    pub fn accept(&mut self, id: u32) -> Result<(), EngineError> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        let matcher = &mut self.matcher;
        std::panic::catch_unwind(AssertUnwindSafe(|| matcher.consume_token(id)))
            .map_err(|_| self.failed("accept the sampled token", "it panicked"))?
            .map_err(|e| self.failed("accept the sampled token", e))
    }
}

#[cfg(test)]
mod tests;
