//! Slack: `chat.postMessage` through slack-morphism, the bot token from the environment, the API
//! base URL configurable (a loopback server in tests). The connector is built from hyper-rustls
//! with `https_or_http` because slack-morphism's own connector refuses plain HTTP; production
//! URLs are https all the same.

use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use super::SendFailure;
use crate::secret::Secret;

/// Slack's public Web API.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";

/// A Slack conversation and the client that posts to it.
pub struct SlackChannel {
    pub channel: String,
    token: SlackApiToken,
    client: SlackClient<SlackClientHyperConnector<HttpsConnector<HttpConnector>>>,
}

impl std::fmt::Debug for SlackChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackChannel").field("channel", &self.channel).field("token", &"***").finish()
    }
}

impl SlackChannel {
    pub fn new(channel: String, token: &Secret, api_url: Option<&str>) -> Result<SlackChannel, String> {
        let builder = match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            // No system CA store (a bare container): https to Slack cannot be verified, but a
            // loopback or internal http relay still works; say so once.
            Err(e) => {
                tracing::warn!(error = %e, "no native CA certificates; https to Slack will fail verification");
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().enable_http2().build();
        let url = api_url.unwrap_or(DEFAULT_API_URL).trim_end_matches('/');
        let client = SlackClient::new(SlackClientHyperConnector::with_connector(connector).with_slack_api_url(url));
        let token = SlackApiToken::new(SlackApiTokenValue(token.0.clone()));
        Ok(SlackChannel { channel, token, client })
    }

    /// Posts `text` (already escaped for Slack) once, as a reply in `thread` when given;
    /// returns the message's `ts` (what later replies thread under).
    pub async fn post(&self, text: &str, thread: Option<&str>, timeout: Duration) -> Result<String, SendFailure> {
        let session = self.client.open_session(&self.token);
        let mut req = SlackApiChatPostMessageRequest::new(
            self.channel.clone().into(),
            SlackMessageContent::new().with_text(text.to_string()),
        );
        req.thread_ts = thread.map(|t| SlackTs(t.to_string()));
        match tokio::time::timeout(timeout, session.chat_post_message(&req)).await {
            Err(_) => Err(SendFailure::transient(format!("no answer from Slack within {timeout:?}"))),
            Ok(Ok(reply)) => Ok(reply.ts.0),
            Ok(Err(SlackClientError::RateLimitError(e))) => {
                Err(SendFailure { message: "rate limited (429)".into(), retry_after: e.retry_after, permanent: false })
            }
            // An API error (`invalid_auth`, `channel_not_found`) will not fix itself.
            Ok(Err(SlackClientError::ApiError(e))) => {
                Err(SendFailure { message: format!("Slack API error: {}", e.code), retry_after: None, permanent: true })
            }
            Ok(Err(e)) => Err(SendFailure::transient(format!("Slack: {e}"))),
        }
    }
}
