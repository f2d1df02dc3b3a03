//! Phases of `/v1/embeddings` that generation has no counterpart of:
//!
//! * [`prepare`], between `prompt_filter` and `limits`: the model must serve embeddings
//!   and `dimensions` fit its vectors; every input is tokenized once (after redaction, so
//!   the count, the audit record and the engine see the same tokens), each must fit the
//!   model's context (400 naming `input[i]`), and their total is what `limits` charges.
//! * [`respond`], after admission: the engine runs the inputs (on the model's inference
//!   thread; dropping the request cancels it there), the vectors are shortened to
//!   `dimensions` and encoded, and the `complete` record gets the usage and a keyed digest
//!   of the vectors.

use std::sync::Arc;

use airlock_engine::{EmbedRequest, Engine, EngineError, ModelInfo, Prompt};
use http::StatusCode;
use hyper::Response;

use super::RequestCtx;
use super::audit::Admitted;
use super::generate::Job;
use super::limits::{INLINE_PREPARE_BYTES, text_bytes};
use crate::api::embeddings::{
    EmbedOptions, EmbeddingObject, EmbeddingsResponse, EmbeddingsUsage, Vector, shorten, to_base64,
};
use crate::api::response::json_response;
use crate::api::{ApiError, BoxBody};

/// Checks the model and the options, and tokenizes every input of `job` (inline when
/// small, else on the blocking pool), replacing each by its token ids where the engine
/// keeps them.
pub async fn prepare(
    engine: &Arc<dyn Engine>,
    models: &[ModelInfo],
    options: EmbedOptions,
    job: &mut Job,
) -> Result<(), ApiError> {
    let info = models
        .iter()
        .find(|m| m.id == job.model)
        .ok_or_else(|| ApiError::ModelNotFound(job.model.clone()))?;
    let size = match (info.features.embeddings, info.embedding_size) {
        (Some(_), Some(size)) => size,
        _ => {
            return Err(ApiError::invalid(
                "model",
                format!("model `{}` does not serve embeddings", job.model),
            ));
        }
    };
    if let Some(d) = options.dimensions
        && d > size
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "model `{}` has {size}-dimensional embeddings; dimensions must be from 1 to \
                 {size}, got {d}",
                job.model
            ),
        ));
    }
    let inputs = std::mem::take(&mut job.inputs);
    let bytes: usize = inputs.iter().map(text_bytes).sum();
    let work = {
        let engine = Arc::clone(engine);
        let model = job.model.clone();
        move || tokenize(&*engine, &model, inputs)
    };
    let tokenized = if bytes <= INLINE_PREPARE_BYTES {
        work()
    } else {
        tokio::task::spawn_blocking(work).await.map_err(|join| {
            tracing::error!(error = %join, "tokenizing embedding inputs panicked");
            ApiError::engine(
                EngineError::Inference("tokenizing the inputs panicked".into()),
                "input",
            )
        })?
    };
    let (inputs, counts) = tokenized.map_err(|e| ApiError::engine(e, "input"))?;
    let context = info.context_length;
    if let Some((i, n)) = counts.iter().enumerate().find(|(_, n)| **n > context) {
        return Err(ApiError::invalid(
            format!("input[{i}]"),
            format!(
                "this model's maximum context length is {context} tokens; input[{i}] has {n} \
                 tokens"
            ),
        ));
    }
    job.input_tokens = counts.iter().sum();
    job.inputs = inputs;
    Ok(())
}

/// Each input as the engine will run it (its ids where preparing kept them) and its
/// token count.
fn tokenize(
    engine: &dyn Engine,
    model: &str,
    inputs: Vec<Prompt>,
) -> Result<(Vec<Prompt>, Vec<usize>), EngineError> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut counts = Vec::with_capacity(inputs.len());
    for input in inputs {
        let prepared = engine.prepare(model, &input)?;
        counts.push(prepared.token_count());
        out.push(match prepared.into_ids() {
            Some(ids) => Prompt::TokenIds(ids),
            None => input,
        });
    }
    Ok((out, counts))
}

/// Runs an admitted embeddings job and answers it.
pub async fn respond(
    engine: &Arc<dyn Engine>,
    ctx: &RequestCtx,
    admitted: Admitted,
    admission: Option<super::limits::TenantAdmission>,
    options: EmbedOptions,
) -> Result<Response<BoxBody>, ApiError> {
    let job = admitted.into_job();
    let model = job.model;
    let pending = engine
        .embed(EmbedRequest {
            request_id: ctx.request_id.clone(),
            model: model.clone(),
            inputs: job.inputs,
        })
        .map_err(|e| ApiError::engine(e, "input"))?;
    let answer = pending
        .wait()
        .await
        .map_err(|e| ApiError::engine(e, "input"))?;
    if let Some(admission) = admission {
        admission.complete(u32::try_from(answer.prompt_tokens).unwrap_or(u32::MAX));
    }
    let data: Vec<EmbeddingObject> = answer
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = shorten(v, options.dimensions);
            EmbeddingObject {
                object: "embedding",
                index,
                embedding: if options.base64 {
                    Vector::Base64(to_base64(&v))
                } else {
                    Vector::Float(v)
                },
            }
        })
        .collect();
    if let Some(trail) = &ctx.trail {
        // The vectors as answered, in their little-endian bytes: a digest, never the text.
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|o| match &o.embedding {
                Vector::Float(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Vector::Base64(b) => b.as_bytes().to_vec(),
            })
            .collect();
        trail.note_tokenizer(answer.prompt_tokens, &bytes, None);
    }
    Ok(json_response(
        StatusCode::OK,
        &EmbeddingsResponse {
            object: "list",
            data,
            model: &model,
            usage: EmbeddingsUsage {
                prompt_tokens: answer.prompt_tokens,
                total_tokens: answer.prompt_tokens,
            },
        },
    ))
}
