//! Why a probe could not start. Failures of single attempts are samples, not errors.

use faultline_spec::secret::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe URL `{url}` is invalid: {why}")]
    Url { url: String, why: String },
    #[error(
        "probe URL `{0}` uses https, which the load generator does not speak yet; probe the service over http (e.g. a loopback or sidecar port)"
    )]
    HttpsUnsupported(String),
    #[error("header `{name}` of the http probe is invalid: {why}")]
    Header { name: String, why: String },
    #[error(
        "`success` entry `{0}` is invalid: expected a class like `2xx` or a status code like `404`"
    )]
    Success(String),
    #[error("probes must be started inside a tokio runtime")]
    NoRuntime,
    #[error("cannot resolve a secret of the probe: {0}")]
    Secret(#[from] SecretError),
    #[error("sql probe: {0}")]
    Sql(String),
    #[error("command probe: `run` is empty; give the program and its arguments")]
    EmptyCommand,
    #[error("llm probe: cannot read prompts_file `{path}`: {why}")]
    Prompts { path: String, why: String },
    #[error("llm probe: no prompts to send (the list or the file is empty)")]
    NoPrompts,
    #[error(
        "llm probe URL `{0}` names neither `/chat/completions` nor `/completions`; set `api: chat` or `api: completions`"
    )]
    LlmApi(String),
    #[error("probe `{kind}` needs a rate above zero")]
    Rate { kind: &'static str },
}
