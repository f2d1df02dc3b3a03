//! Phase `tokenize`, for the tokenizer routes only: after admission, the model's tokenizer
//! answers `/tokenize` and `/detokenize`; the model runs nothing. Everything before it
//! (authentication, the allow-list, the request limits, the prompt filter on `/tokenize`'s
//! text, the admission record) is the path every request takes; the `complete` record
//! follows in `audit::finish`, with the token count and a keyed digest of the answer.

use std::sync::Arc;

use airlock_engine::{Engine, EngineError, ModelInfo, Prompt};
use http::StatusCode;
use hyper::Response;

use super::RequestCtx;
use super::audit::Admitted;
use super::limits::{INLINE_PREPARE_BYTES, text_bytes};
use crate::api::request::Inference;
use crate::api::response::json_response;
use crate::api::tokenize::{
    DetokenizeResponse, Piece, TokenizeOptions, TokenizeResponse, Tokens, check_count,
};
use crate::api::{ApiError, BoxBody};

/// Token ids up to this many are detokenized on the async worker (bounded work of the
/// order of reading them); more on the blocking pool.
const INLINE_IDS: usize = 512;

/// What the tokenizer answered.
enum Answer {
    Tokens {
        ids: Vec<u32>,
        pieces: Option<Vec<String>>,
    },
    Text(String),
}

/// Answers an admitted tokenizer request.
pub async fn respond(
    engine: &Arc<dyn Engine>,
    models: &[ModelInfo],
    ctx: &RequestCtx,
    admitted: Admitted,
    options: TokenizeOptions,
) -> Result<Response<BoxBody>, ApiError> {
    let job = admitted.into_job();
    let param = job.prompt_param;
    let inline = match &job.prompt {
        Prompt::TokenIds(ids) => ids.len() <= INLINE_IDS,
        prompt => text_bytes(prompt) <= INLINE_PREPARE_BYTES,
    };
    let input_ids = match &job.prompt {
        Prompt::TokenIds(ids) => ids.len(),
        _ => 0,
    };
    let (route, model, prompt) = (job.route, job.model, job.prompt);
    let context = models
        .iter()
        .find(|m| m.id == model)
        .map_or(0, |m| m.context_length);
    let work = {
        let engine = Arc::clone(engine);
        move || run(&*engine, route, &model, prompt, options)
    };
    let answer = if inline {
        work()
    } else {
        tokio::task::spawn_blocking(work).await.map_err(|join| {
            tracing::error!(error = %join, "tokenizer panicked");
            EngineError::Inference("the tokenizer panicked".into())
        })?
    };
    let answer = answer.map_err(|e| match e {
        // Ids out of the vocabulary: the engine names its own field for them.
        EngineError::InvalidRequest { reason, .. } if route == Inference::Detokenize => {
            ApiError::invalid("tokens", reason)
        }
        e => ApiError::engine(e, param),
    })?;
    Ok(match answer {
        Answer::Tokens { ids, pieces } => {
            check_count(param, ids.len())?;
            if let Some(trail) = &ctx.trail {
                let bytes = serde_json::to_vec(&ids).unwrap_or_default();
                trail.note_tokenizer(ids.len(), &bytes, None);
            }
            let count = ids.len();
            let tokens = match pieces {
                Some(pieces) => Tokens::Pieces(
                    ids.into_iter()
                        .zip(pieces)
                        .map(|(id, piece)| Piece { id, piece })
                        .collect(),
                ),
                None => Tokens::Ids(ids),
            };
            json_response(
                StatusCode::OK,
                &TokenizeResponse {
                    tokens,
                    count,
                    max_model_len: context,
                },
            )
        }
        Answer::Text(text) => {
            if let Some(trail) = &ctx.trail {
                trail.note_tokenizer(input_ids, text.as_bytes(), Some(&text));
            }
            json_response(
                StatusCode::OK,
                &DetokenizeResponse {
                    content: &text,
                    prompt: &text,
                },
            )
        }
    })
}

fn run(
    engine: &dyn Engine,
    route: Inference,
    model: &str,
    prompt: Prompt,
    options: TokenizeOptions,
) -> Result<Answer, EngineError> {
    match (route, prompt) {
        (Inference::Detokenize, Prompt::TokenIds(ids)) => {
            engine.detokenize(model, &ids).map(Answer::Text)
        }
        (_, Prompt::Text(text)) => {
            let ids = engine.tokenize(model, &text, options.add_special)?;
            let pieces = options
                .with_pieces
                .then(|| engine.token_pieces(model, &ids))
                .transpose()?;
            Ok(Answer::Tokens { ids, pieces })
        }
        _ => Err(EngineError::Inference(
            "a tokenizer job without its input".into(),
        )),
    }
}
