//! OpenAI-style completions on the service: `POST /v1/chat/completions` and
//! `POST /v1/completions`, streamed as server-sent events (`"stream": true`) or
//! answered whole.
//!
//! The first token comes after the simulated inference latency (lognormal around
//! the base, as `/v1/complete`); then one token (a word) per
//! `token_interval`, steadily. The number of tokens is the simulated completion's,
//! at most `max_tokens` (default 16). A stream is OpenAI's shape: a role-only
//! first chunk, one chunk per token (`choices[0].delta.content` for chat,
//! `choices[0].text` for completions), a last chunk with `finish_reason`
//! (`length` when `max_tokens` cut it, else `stop`) and `usage`, then
//! `data: [DONE]`. Whole answers carry the same text and `usage`. These
//! endpoints do not touch the jobs database: they are what stream faults break.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::body::Frame;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::inference;
use crate::service::error;

#[derive(Debug)]
pub(crate) struct Chat {
    pub(crate) base_latency: Duration,
    pub(crate) token_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: String,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
}

const DEFAULT_MAX_TOKENS: u32 = 16;

pub(crate) fn routes(router: Router<()>, chat: Chat) -> Router<()> {
    let chat = Arc::new(chat);
    let c = Arc::clone(&chat);
    router
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: Bytes| complete(Arc::clone(&c), Api::Chat, body)),
        )
        .route(
            "/v1/completions",
            axum::routing::post(move |body: Bytes| {
                complete(Arc::clone(&chat), Api::Completions, body)
            }),
        )
}

async fn complete(chat: Arc<Chat>, api: Api, body: Bytes) -> Response {
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected an OpenAI-style completion request: {err}"),
            );
        }
    };
    let prompt_missing = match api {
        Api::Chat => req.messages.as_ref().is_none_or(|m| m.is_empty()),
        Api::Completions => req.prompt.is_none(),
    };
    if prompt_missing {
        let what = match api {
            Api::Chat => "`messages`",
            Api::Completions => "`prompt`",
        };
        return error(StatusCode::BAD_REQUEST, &format!("expected {what}"));
    }
    let prompt_words = match api {
        Api::Chat => req
            .messages
            .iter()
            .flatten()
            .map(|m| m.content.split_whitespace().count())
            .sum(),
        Api::Completions => req
            .prompt
            .as_deref()
            .map_or(0, |p| p.split_whitespace().count()),
    };
    let model = req.model.unwrap_or_else(|| "faultline-demo".to_owned());
    let max = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1);
    let inference = inference::infer(chat.base_latency);
    let words: Vec<String> = inference
        .completion
        .split(' ')
        .take(max as usize)
        .map(str::to_owned)
        .collect();
    let finish = if inference.tokens > max {
        "length"
    } else {
        "stop"
    };
    let usage = serde_json::json!({
        "prompt_tokens": prompt_words,
        "completion_tokens": words.len(),
        "total_tokens": prompt_words + words.len(),
    });
    if !req.stream {
        tokio::time::sleep(inference.latency + chat.token_interval * words.len() as u32).await;
        let text = words.join(" ");
        let choice = match api {
            Api::Chat => serde_json::json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": finish,
            }),
            Api::Completions => {
                serde_json::json!({ "index": 0, "text": text, "finish_reason": finish })
            }
        };
        let object = match api {
            Api::Chat => "chat.completion",
            Api::Completions => "text_completion",
        };
        return Json(serde_json::json!({
            "id": "demo",
            "object": object,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }))
        .into_response();
    }
    let (tx, rx) = mpsc::channel(8);
    let stream = Stream {
        api,
        model,
        words,
        finish,
        usage,
        first: inference.latency,
        interval: chat.token_interval,
    };
    tokio::spawn(stream.run(tx));
    let mut response = Response::new(Body::new(EventBody(rx)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One stream's plan, played out on its own task.
struct Stream {
    api: Api,
    model: String,
    words: Vec<String>,
    finish: &'static str,
    usage: serde_json::Value,
    first: Duration,
    interval: Duration,
}

impl Stream {
    fn chunk(&self, choice: serde_json::Value) -> serde_json::Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        serde_json::json!({ "id": "demo", "object": object, "model": self.model, "choices": [choice] })
    }

    fn event(v: &serde_json::Value) -> Bytes {
        Bytes::from(format!("data: {v}\n\n"))
    }

    fn token(&self, i: usize, word: &str) -> serde_json::Value {
        let text = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        match self.api {
            Api::Chat => {
                serde_json::json!({ "index": 0, "delta": { "content": text }, "finish_reason": null })
            }
            Api::Completions => {
                serde_json::json!({ "index": 0, "text": text, "finish_reason": null })
            }
        }
    }

    async fn run(self, tx: mpsc::Sender<Bytes>) {
        // A client that goes away ends the stream: sends fail and the task returns.
        if self.api == Api::Chat {
            let role = serde_json::json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null });
            if tx.send(Self::event(&self.chunk(role))).await.is_err() {
                return;
            }
        }
        let start = tokio::time::Instant::now() + self.first;
        for (i, word) in self.words.iter().enumerate() {
            // From the plan, not by adding sleeps: a steady pace that does not drift.
            tokio::time::sleep_until(start + self.interval * i as u32).await;
            if tx
                .send(Self::event(&self.chunk(self.token(i, word))))
                .await
                .is_err()
            {
                return;
            }
        }
        let last = match self.api {
            Api::Chat => {
                serde_json::json!({ "index": 0, "delta": {}, "finish_reason": self.finish })
            }
            Api::Completions => {
                serde_json::json!({ "index": 0, "text": "", "finish_reason": self.finish })
            }
        };
        let mut last = self.chunk(last);
        last["usage"] = self.usage.clone();
        if tx.send(Self::event(&last)).await.is_err() {
            return;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    }
}

/// The receiving half of a stream's channel as a body of data frames.
struct EventBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
