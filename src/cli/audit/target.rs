//! The endpoint under audit: medsentry.v1 Screen with one PNG per query, or the Open
//! Inference Protocol's ModelInfer (`oip.rs`), at a bounded rate and within a query budget
//! and a deadline. Every query is recorded (queries.jsonl: what was sent, by sha256, and
//! what came back) so that the audit is itself auditable.

use std::io::Write;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::image::Image;
use super::oip::{OipAnswer, OipClient, Payload};
use crate::proto::{self, sentry_client::SentryClient};

/// The API the queries go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// medsentry.v1 Screen, the image as PNG.
    Sentry,
    /// Open Inference Protocol ModelInfer, the image as one PNG in a BYTES element.
    OipBytes,
    /// Open Inference Protocol ModelInfer, an FP32 [1, C, H, W] tensor at the model's size
    /// (a Triton model's own input; what medsentry in proxy mode forwards).
    OipFp32,
}

enum Client {
    Sentry(SentryClient<Channel>),
    Oip(OipClient),
}

/// What one query returned, as an outside caller sees it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Class probabilities (empty when refused or failed).
    pub probabilities: Vec<f32>,
    pub top: Option<usize>,
    pub verdict: Outcome,
    /// The campaign monitor's alarm after this query, when the endpoint reports one.
    pub campaign_alarm: bool,
}

/// How the endpoint treated one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Clean,
    Suspicious,
    Adversarial,
    OutOfDistribution,
    NotScreened,
    /// PERMISSION_DENIED: the policy refused the input.
    Refused,
    /// Any other error (the query still counts against the budget).
    Error,
}

impl Outcome {
    /// Flagged as an attack: the verdict says so or the policy refused it.
    pub fn flagged(self) -> bool {
        matches!(self, Outcome::Suspicious | Outcome::Adversarial | Outcome::Refused)
    }

    /// Answered as an ordinary image: what an attacker needs.
    pub fn passed(self) -> bool {
        matches!(self, Outcome::Clean | Outcome::NotScreened)
    }
}

/// Refuses a target that is not on this machine unless the operator allowed it: the
/// audit sends attack traffic and must not become a way to attack someone else's endpoint.
pub fn check_target(target: &str, allow_remote: bool) -> anyhow::Result<()> {
    let addrs: Vec<IpAddr> = target.to_socket_addrs().map_err(|e| anyhow::anyhow!("--target {target}: {e}"))?.map(|a| a.ip()).collect();
    anyhow::ensure!(!addrs.is_empty(), "--target {target} resolves to no address");
    if !allow_remote && !addrs.iter().all(|ip| ip.is_loopback()) {
        anyhow::bail!("--target {target} is not a loopback address ({addrs:?}); pass --allow-remote to audit an endpoint on another host");
    }
    Ok(())
}

pub struct Target {
    client: Client,
    model: String,
    /// Smallest gap between two queries (from --rate).
    gap: Duration,
    last: Option<Instant>,
    deadline: Instant,
    log: std::io::BufWriter<std::fs::File>,
    /// Queries sent so far, all attacks together.
    pub sent: usize,
    /// Query index (1-based) at which the campaign alarm was first seen.
    pub first_alarm: Option<usize>,
    /// Every answer so far by outcome: the test holds them against the server's counters.
    pub outcomes: std::collections::BTreeMap<Outcome, usize>,
}

impl Target {
    pub async fn connect(target: &str, protocol: Protocol, model: &str, rate: f64, max_seconds: f64, log_path: &std::path::Path) -> anyhow::Result<Target> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{target}"))?.connect().await.map_err(|e| anyhow::anyhow!("connecting to {target}: {e}"))?;
        let client = match protocol {
            Protocol::Sentry => Client::Sentry(SentryClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(256 << 20)),
            Protocol::OipBytes | Protocol::OipFp32 => Client::Oip(OipClient::connect(channel, model, protocol == Protocol::OipFp32).await?),
        };
        let gap = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
        Ok(Target {
            client,
            model: model.to_string(),
            gap,
            last: None,
            deadline: Instant::now() + Duration::from_secs_f64(max_seconds),
            log: std::io::BufWriter::new(std::fs::File::create(log_path)?),
            sent: 0,
            first_alarm: None,
            outcomes: Default::default(),
        })
    }

    /// (channels, height, width) the images must be brought to before the attacks, when
    /// queries carry tensors at the model's size.
    pub fn model_size(&self) -> Option<(usize, usize, usize)> {
        match &self.client {
            Client::Oip(OipClient { payload: Payload::Fp32 { channels, height, width }, .. }) => Some((*channels, *height, *width)),
            _ => None,
        }
    }

    /// True once the run's time is up: attacks stop and the report says so.
    pub fn out_of_time(&self) -> bool {
        Instant::now() >= self.deadline
    }

    pub async fn query(&mut self, img: &Image, attack: &str, image: &str) -> anyhow::Result<Answer> {
        if let Some(last) = self.last {
            let wait = self.gap.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.last = Some(Instant::now());
        self.sent += 1;
        let id = format!("audit-{}", self.sent);
        let (sha, answer) = match &mut self.client {
            Client::Sentry(client) => {
                let png = img.png();
                let sha = hex::encode(Sha256::digest(&png));
                let req = proto::ScreenRequest { request_id: id, model: self.model.clone(), input: Some(proto::screen_request::Input::Image(png)) };
                (sha, screen_answer(client.screen(req).await))
            }
            Client::Oip(client) => {
                let png = if client.payload == Payload::Png { img.png() } else { Vec::new() };
                let req = client.request(img, png, id);
                let sha = hex::encode(Sha256::digest(&req.raw_input_contents[0]));
                (sha, client.infer(req).await.map(oip_answer).unwrap_or_else(refused_or_failed))
            }
        };
        *self.outcomes.entry(answer.verdict).or_insert(0) += 1;
        if answer.campaign_alarm && self.first_alarm.is_none() {
            self.first_alarm = Some(self.sent);
        }
        let line = serde_json::json!({"query": self.sent, "attack": attack, "image": image, "sent_sha256": sha,
            "outcome": answer.verdict, "top": answer.top, "campaign_alarm": answer.campaign_alarm});
        writeln!(self.log, "{line}")?;
        Ok(answer)
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.log.flush()?;
        Ok(())
    }
}

fn screen_answer(result: Result<tonic::Response<proto::ScreenResponse>, tonic::Status>) -> Answer {
    let r = match result {
        Ok(r) => r.into_inner(),
        Err(status) => return refused_or_failed(status),
    };
    let s = r.screening.unwrap_or_default();
    let verdict = match proto::Verdict::try_from(s.verdict).unwrap_or(proto::Verdict::Unspecified) {
        proto::Verdict::Clean => Outcome::Clean,
        proto::Verdict::Suspicious => Outcome::Suspicious,
        proto::Verdict::Adversarial => Outcome::Adversarial,
        proto::Verdict::OutOfDistribution => Outcome::OutOfDistribution,
        _ => Outcome::NotScreened,
    };
    let campaign_alarm = s.campaign.map(|c| c.alarm).unwrap_or(false);
    Answer { probabilities: r.probabilities.iter().map(|p| p.probability).collect(), top: Some(r.top_index as usize), verdict, campaign_alarm }
}

/// An OIP answer: the verdict from `medsentry.verdict` (an endpoint that sends none
/// screens nothing, so every answer passes), the top label from the probabilities.
fn oip_answer(a: OipAnswer) -> Answer {
    let verdict = match a.verdict.as_deref() {
        Some("CLEAN") => Outcome::Clean,
        Some("SUSPICIOUS") => Outcome::Suspicious,
        Some("ADVERSARIAL") => Outcome::Adversarial,
        Some("OUT_OF_DISTRIBUTION") => Outcome::OutOfDistribution,
        _ => Outcome::NotScreened,
    };
    let top = (!a.probabilities.is_empty()).then(|| (0..a.probabilities.len()).max_by(|&i, &j| a.probabilities[i].total_cmp(&a.probabilities[j])).unwrap_or(0));
    Answer { probabilities: a.probabilities, top, verdict, campaign_alarm: a.campaign_alarm }
}

fn refused_or_failed(status: tonic::Status) -> Answer {
    let verdict = if status.code() == tonic::Code::PermissionDenied {
        Outcome::Refused
    } else {
        tracing::debug!(code = ?status.code(), message = status.message(), "audit query failed");
        Outcome::Error
    };
    Answer { probabilities: vec![], top: None, verdict, campaign_alarm: false }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_targets_without_allow_remote() {
        assert!(super::check_target("127.0.0.1:50051", false).is_ok());
        assert!(super::check_target("[::1]:50051", false).is_ok());
        let err = super::check_target("192.0.2.7:50051", false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(super::check_target("192.0.2.7:50051", true).is_ok());
    }
}
