//! The event vocabulary of a streamed response (`event: <type>` + `data: {…}` per event,
//! each with a `sequence_number`; no `[DONE]`). [`crate::api::sse::Chunker`] calls these
//! in place of chat chunks, so the stream machinery (filter window, tool-call splitter,
//! audit record before the final event) is the chat stream's.

use airlock_engine::Usage;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Ending, Head, call_item, item_id, message_item, object};
use crate::api::error::ApiError;
use crate::api::openai::tool_calls::ToolCall;

/// What a streamed response has sent so far.
#[derive(Debug)]
pub struct ResponseEvents {
    pub echo: Map<String, Value>,
    sequence: u64,
    /// The open message item: its id and the text sent in it.
    message: Option<(String, String)>,
    /// Finished output items, for the final response object.
    output: Vec<Value>,
}

impl ResponseEvents {
    pub fn new(echo: Map<String, Value>) -> Self {
        ResponseEvents {
            echo,
            sequence: 0,
            message: None,
            output: Vec::new(),
        }
    }

    /// `event: <type>` and its data, with the next `sequence_number`.
    fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
        if let Value::Object(map) = &mut data {
            map.insert("type".into(), json!(kind));
            map.insert("sequence_number".into(), json!(self.sequence));
        }
        self.sequence += 1;
        let mut out = format!("event: {kind}\ndata: ").into_bytes();
        // A `Value` always serializes.
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// `response.created` and `response.in_progress`.
    pub fn opening(&mut self, head: &Head<'_>) -> Vec<Bytes> {
        let response = object(head, Ending::InProgress, Vec::new(), None, &self.echo);
        vec![
            self.event("response.created", json!({ "response": response })),
            self.event("response.in_progress", json!({ "response": response })),
        ]
    }

    /// A text delta, opening the message item (and its one content part) first.
    pub fn text(&mut self, delta: &str) -> Vec<Bytes> {
        let mut out = Vec::new();
        let output_index = self.output.len();
        if self.message.is_none() {
            let id = item_id("msg");
            let mut item = message_item(&id, "", "in_progress");
            item["content"] = json!([]);
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
            ));
            out.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
            self.message = Some((id, String::new()));
        }
        let id = match &mut self.message {
            Some((id, text)) => {
                text.push_str(delta);
                id.clone()
            }
            None => String::new(),
        };
        out.push(self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": output_index, "content_index": 0,
                "delta": delta, "logprobs": []}),
        ));
        out
    }

    /// Closes the open message item: `output_text.done`, `content_part.done`,
    /// `output_item.done`.
    fn close_message(&mut self) -> Vec<Bytes> {
        let Some((id, text)) = self.message.take() else {
            return Vec::new();
        };
        let output_index = self.output.len();
        let item = message_item(&id, &text, "completed");
        let out = vec![
            self.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                    "text": text, "logprobs": []}),
            ),
            self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                    "part": item["content"][0]}),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            ),
        ];
        self.output.push(item);
        out
    }

    /// One parsed call as a `function_call` item: added, its arguments (one delta), done.
    pub fn call(&mut self, call: &ToolCall) -> Vec<Bytes> {
        let mut out = self.close_message();
        let output_index = self.output.len();
        let item = call_item(call);
        let id = item["id"].clone();
        let mut added = item.clone();
        added["arguments"] = json!("");
        added["status"] = json!("in_progress");
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": output_index, "item": added}),
        ));
        out.push(self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": output_index, "delta": call.arguments}),
        ));
        out.push(self.event(
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": output_index, "name": call.name,
                "arguments": call.arguments}),
        ));
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        ));
        self.output.push(item);
        out
    }

    /// The end: open items closed, then `response.completed` (or `response.incomplete`)
    /// with the whole response.
    pub fn finish(&mut self, head: &Head<'_>, ending: Ending, usage: Option<Usage>) -> Vec<Bytes> {
        let mut out = self.close_message();
        let kind = match ending {
            Ending::Incomplete(_) => "response.incomplete",
            Ending::Completed | Ending::InProgress => "response.completed",
        };
        let response = object(head, ending, self.output.clone(), usage, &self.echo);
        out.push(self.event(kind, json!({ "response": response })));
        out
    }

    /// An error after the stream began: OpenAI's `error` event (the SDKs raise it).
    pub fn error(&mut self, error: &ApiError) -> Bytes {
        let object = error.object();
        self.event(
            "error",
            json!({"code": object.code, "message": object.message, "param": object.param}),
        )
    }
}
