//! The Slack app: people start and follow sessions from Slack.
//!
//! - [`verify`]: every request from Slack is checked against the signing secret
//!   (HMAC-SHA256, constant-time compare, five-minute replay window).
//! - [`events`]: decoding Events API deliveries, slash commands and button clicks (pure).
//! - [`api`]: the Slack Web API client (base URL configurable; rate limits waited out a
//!   bounded number of times).
//! - [`classify`]: the repository classifier (a named repository, else a fast model through
//!   the agent's provider layer; unsure means asking, never guessing).
//! - [`repos`]: where repositories come from ([`RepoDirectory`]): the registry in the
//!   index, plus `[[slack.repos]]`.
//! - [`state`]: the app's own SQLite file: thread ↔ session, deliveries seen, Slack ↔
//!   Hangar user links, link codes, requests waiting for a choice.
//! - [`progress`]: a session as its thread shows it (pure), and the edit throttle.
//! - [`bot`]: the behaviour, driving sessions through [`hangar_session::Sessions`] as the
//!   HTTP API does.
//!
//! HTTP stays in the server: it hands this crate the raw body and headers of
//! `/slack/events`, `/slack/commands` and `/slack/interactivity`.
//!
//! **Invariants:** nothing is acted on before its signature is verified; a delivery (event
//! id) and a message (channel + ts) are acted on at most once; the bot token and signing
//! secret are never logged (`Debug` redacts them); Slack API failures are logged or
//! reported in the thread, and rate limits are waited out a bounded number of times.

#![deny(missing_docs)]

pub mod api;
pub mod bot;
pub mod classify;
pub mod events;
pub mod progress;
pub mod repos;
pub mod state;
pub mod verify;

pub use api::{SlackClient, SlackUser};
pub use bot::{BotConfig, EventsAnswer, LinkError, Linked, SlackBot};
pub use classify::{Classifier, Verdict};
pub use repos::{FixedRepos, RegistryRepos, RepoDirectory, Repository};
pub use state::SlackState;
pub use verify::VerifyError;
